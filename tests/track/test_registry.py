"""The registry and the promotion gate on a real MLflow SQLite store with real packages.

Each test registers the shared runs (tests/track/conftest.py) under its own model name.
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Iterator

import pytest

from shipyard.errors import ConfigError, NotFoundError, UserError
from shipyard.export.package import MANIFEST, ModelPackage, PackageError, sha256_file
from shipyard.track import gate, history, tracking
from shipyard.track.gate import GateRefused
from shipyard.track.registry import (
    derive_name,
    fetch_package,
    get_history,
    list_versions,
    parse_ref,
    promote,
    register,
    rollback,
)


def _names(cfg: object) -> set[str]:
    return {m.name for m in tracking.client(cfg).search_registered_models()}


def _champion(cfg: object, name: str) -> int | None:
    aliases = tracking.client(cfg).get_registered_model(name).aliases
    return int(aliases["champion"]) if "champion" in aliases else None


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_register_is_idempotent_and_names_the_model_after_the_data(trained) -> None:
    cfg = trained.cfg()
    newest = trained.clone_run(cfg, trained.good)  # the newest run with a package

    first = register(cfg)  # no run given: the newest run of the task that has a package
    assert (first.name, first.version, first.run_id, first.reused) == ("wine", 1, newest, False)
    assert first.source.endswith(f"{newest}/artifacts/package")
    again = register(cfg, newest)
    assert (again.version, again.reused) == (1, True)

    package, _ = fetch_package(cfg, "wine/1")
    tags = first.tags
    assert tags["shipyard.task"] == "tabular"
    assert tags["shipyard.output_kind"] == "classes"
    assert tags["shipyard.snapshot_id"] == trained.snapshot["good"]
    assert tags["shipyard.metric"] == "test_accuracy"
    assert float(tags["shipyard.metric_value"]) == package.manifest.metrics["test_accuracy"]
    assert tags["shipyard.parity_passed"] == "true"
    assert float(tags["shipyard.parity_max_abs_diff"]) == package.manifest.parity.max_abs_diff
    assert tags["shipyard.package_sha256"] == sha256_file(package.path / MANIFEST)

    second = register(cfg, trained.good)  # another run: a new version
    assert (second.version, second.reused) == (2, False)
    listed = list_versions(cfg, "wine")
    assert [v.version for v in listed] == [2, 1]
    assert register(cfg, trained.good, name="wine-alias").version == 1  # a name of its own

    with pytest.raises(ConfigError, match="invalid model name"):
        register(cfg, trained.good, name="Wine Model")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source": "table", "path": "/data/Red Wine.csv"}, "red-wine"),
        ({"source": "folder", "path": "/data/rice_images/"}, "rice_images"),
        ({"source": "huggingface", "name": "uoft-cs/CIFAR10"}, "cifar10"),
        ({"source": "digits"}, "digits"),
    ],
)
def test_the_model_name_comes_from_the_data(trained, data: dict[str, str], expected: str) -> None:
    cfg = trained.cfg()
    version = register(cfg, trained.good, name="wine-naming").version  # reused after the first
    package, _ = fetch_package(cfg, f"wine-naming/{version}")
    lineage = package.manifest.lineage.model_copy(update={"snapshot_store": "/nowhere"})
    manifest = package.manifest.model_copy(update={"lineage": lineage, "config": {"data": data}})
    assert derive_name(manifest) == expected


def test_a_missing_or_corrupted_package_changes_nothing(trained) -> None:
    cfg = trained.cfg()
    client = tracking.client(cfg)
    bare = client.create_run(client.get_run(trained.good).info.experiment_id)
    before = _names(cfg)

    with pytest.raises(NotFoundError) as missing:
        register(cfg, bare.info.run_id, name="wine-broken")
    assert "has no model package" in _one_line(missing.value)

    gone = trained.clone_run(cfg, trained.good)
    shutil.rmtree(trained.artifact_folder(cfg, gone) / "package")
    with pytest.raises(PackageError) as deleted:
        register(cfg, gone, name="wine-broken")
    _one_line(deleted.value)

    corrupted = trained.clone_run(cfg, trained.good)
    trained.damage(trained.artifact_folder(cfg, corrupted) / "package" / "model.onnx")
    with pytest.raises(PackageError) as altered:
        register(cfg, corrupted, name="wine-broken")
    assert "model.onnx does not match its checksum" in _one_line(altered.value)

    assert _names(cfg) == before  # no model, no version


def test_gate_promotes_the_first_refuses_a_worse_model_and_force_is_recorded(trained) -> None:
    cfg, name = trained.cfg(), "wine-gate"
    good = register(cfg, trained.good, name=name).version
    bad = register(cfg, trained.bad, name=name).version

    first = promote(cfg, name, good, user="ci")
    assert not first.reused
    assert not first.forced
    assert first.previous is None
    assert {c.name: c.passed for c in first.checks} == {
        "integrity": True,
        "parity": True,
        "latency": True,
        "compatibility": True,
        "metric": True,
    }
    assert _champion(cfg, name) == good
    assert promote(cfg, name, good).reused  # already champion: nothing to do

    with pytest.raises(GateRefused) as refused:
        promote(cfg, name, bad)
    assert "metric failed" in _one_line(refused.value)
    metric = next(c for c in refused.value.checks if c.name == "metric")
    assert not metric.passed
    assert f"{trained.accuracy['bad']:.4f}" in metric.detail
    assert f"{trained.accuracy['good']:.4f}" in metric.detail
    assert _champion(cfg, name) == good

    with pytest.raises(UserError, match="--force needs --reason"):
        promote(cfg, name, bad, force=True)
    assert _champion(cfg, name) == good

    forced = promote(cfg, name, bad, force=True, reason="demo of an override", user="alice")
    assert forced.forced
    assert forced.previous == good
    assert _champion(cfg, name) == bad
    tags = tracking.client(cfg).get_model_version(name, str(bad)).tags
    assert tags["shipyard.forced"] == "true"
    assert tags["shipyard.forced_by"] == "alice"
    assert tags["shipyard.force_reason"] == "demo of an override"
    assert tags["shipyard.forced_checks"] == "metric"
    assert tags["shipyard.promoted_by"] == "alice"

    events = get_history(cfg, name)
    assert [(e["action"], e["version"], e["previous"], e["forced"]) for e in events] == [
        ("promote", good, None, False),
        ("promote", bad, good, True),
    ]
    assert events[1]["by"] == "alice"
    assert events[1]["reason"] == "demo of an override"


def test_latency_budget_and_a_missing_measurement_refuse(trained) -> None:
    name = "wine-latency"
    version = register(trained.cfg(), trained.good, name=name).version
    tiny = trained.cfg("registry.gate.max_latency_ms=1e-9")
    with pytest.raises(GateRefused) as slow:
        promote(tiny, name, version)
    latency = next(c for c in slow.value.checks if c.name == "latency")
    assert not latency.passed
    assert "> budget 1e-09 ms" in latency.detail

    unmeasured = trained.cfg("registry.gate.latency_batch_size=3")
    with pytest.raises(GateRefused) as missing:
        promote(unmeasured, name, version)
    latency = next(c for c in missing.value.checks if c.name == "latency")
    assert "no fp32 latency measured at batch size 3" in latency.detail
    assert _champion(trained.cfg(), name) is None


def test_a_package_altered_after_registration_is_refused_even_with_force(trained) -> None:
    cfg, name = trained.cfg(), "wine-tamper"
    run = trained.clone_run(cfg, trained.good)
    version = register(cfg, run, name=name).version
    fetch_package(cfg, f"{name}/{version}")  # a verified local copy exists, too
    trained.damage(trained.artifact_folder(cfg, run) / "package" / "model.onnx")

    with pytest.raises(GateRefused) as refused:
        promote(cfg, name, version, force=True, reason="ship it anyway")
    assert "not even with --force" in _one_line(refused.value)
    (check,) = refused.value.checks
    assert (check.name, check.passed, check.overridable) == ("integrity", False, False)
    assert "model.onnx does not match its checksum" in check.detail
    assert _champion(cfg, name) is None
    assert get_history(cfg, name) == []


def test_a_consistently_rewritten_manifest_is_caught_by_the_registered_digest(trained) -> None:
    cfg, name = trained.cfg(), "wine-rewritten"
    run = trained.clone_run(cfg, trained.good)
    version = register(cfg, run, name=name).version
    manifest_path = trained.artifact_folder(cfg, run) / "package" / MANIFEST
    data = json.loads(manifest_path.read_text())
    data["metrics"]["test_accuracy"] = 1.0  # a better-looking number, checksums intact
    manifest_path.write_text(json.dumps(data))

    with pytest.raises(PackageError, match="manifest changed after registration"):
        fetch_package(cfg, f"{name}/{version}")


def test_fetch_resolves_references_caches_and_redownloads_a_damaged_copy(trained) -> None:
    cfg, name = trained.cfg(), "wine-fetch"
    version = register(cfg, trained.good, name=name).version
    promote(cfg, name, version)

    package, info = fetch_package(cfg, f"{name}@champion")
    assert package.path == trained.home / "registry" / name / str(version)
    assert (info.version, info.aliases, info.run_id) == (version, ["champion"], trained.good)
    assert fetch_package(cfg, f"{name}@{version}")[0].path == package.path
    assert fetch_package(cfg, name)[1].version == version  # a bare name: the champion

    trained.damage(package.graph_path())  # the local copy, not the registry's
    again, _ = fetch_package(cfg, f"{name}/{version}")
    assert sha256_file(again.graph_path()) == again.manifest.graph().sha256

    with pytest.raises(NotFoundError, match=rf"{name} has no version 9 \(versions: 1\)"):
        fetch_package(cfg, f"{name}/9")
    with pytest.raises(NotFoundError, match=r"no alias 'staging' \(aliases: champion=v1\)"):
        fetch_package(cfg, f"{name}@staging")
    with pytest.raises(NotFoundError, match=r"no registered model 'nope'.*wine-fetch"):
        fetch_package(cfg, "nope@champion")


def test_a_retrain_on_new_data_is_judged_on_its_own_test_split(trained) -> None:
    from shipyard.data.snapshot import SnapshotStore
    from shipyard.export.scoring import score_onnx

    cfg, name = trained.cfg(), "wine-resnap"
    champion = register(cfg, trained.good, name=name).version
    promote(cfg, name, champion)
    candidate = register(cfg, trained.other, name=name).version

    snapshot = SnapshotStore(str(cfg.paths.snapshots)).get(trained.snapshot["other"])
    champion_package, _ = fetch_package(cfg, f"{name}/{champion}")
    rescored = score_onnx(
        champion_package.graph_path(), "tabular", snapshot.load("test"), snapshot.manifest["schema"]
    )["accuracy"]
    try:
        outcome = promote(cfg, name, candidate)
        checks, passed = outcome.checks, True
    except GateRefused as refused:
        checks, passed = refused.checks, False
    metric = next(c for c in checks if c.name == "metric")
    assert "re-scored" in metric.detail
    assert f"snapshot {trained.snapshot['other']}" in metric.detail
    assert f"champion v{champion} {rescored:.4f}" in metric.detail
    assert passed == (trained.accuracy["other"] >= rescored)


def test_a_champion_with_other_labels_is_not_comparable(trained) -> None:
    cfg, name = trained.cfg(), "wine-compat"
    version = register(cfg, trained.good, name=name).version
    package, _ = fetch_package(cfg, f"{name}/{version}")
    relabelled = package.manifest.model_copy(update={"labels": ["red", "white", "rose"]})
    champion = gate.Contender(7, ModelPackage(package.path, relabelled))
    integrity, candidate = gate.integrity(version, lambda: package)

    checks = {c.name: c for c in gate.run_gate(cfg, integrity, candidate, champion)}
    assert not checks["compatibility"].passed
    assert "labels ['class_0', 'class_1', 'class_2'] vs champion's ['red', 'white', 'rose']" in (
        checks["compatibility"].detail
    )
    assert not checks["metric"].passed
    assert "not comparable with champion v7" in checks["metric"].detail


def test_rollback_walks_back_through_the_champions_and_skips_deleted_versions(trained) -> None:
    cfg, name = trained.cfg(), "wine-rollback"
    v1 = register(cfg, trained.good, name=name).version
    v2 = register(cfg, trained.bad, name=name).version
    v3 = register(cfg, trained.clone_run(cfg, trained.good), name=name).version
    v4 = register(cfg, trained.clone_run(cfg, trained.good), name=name).version
    promote(cfg, name, v1)
    promote(cfg, name, v2, force=True, reason="test")
    promote(cfg, name, v3)
    promote(cfg, name, v4)
    tracking.client(cfg).delete_model_version(name, str(v3))

    back = rollback(cfg, name, reason="bad deploy", user="bob")
    assert (back.version, back.previous, back.skipped) == (v2, v4, [v3])
    assert _champion(cfg, name) == v2
    assert rollback(cfg, name).version == v1  # one further back
    assert _champion(cfg, name) == v1
    with pytest.raises(UserError) as nothing:
        rollback(cfg, name)
    assert "nothing to roll wine-rollback back to" in _one_line(nothing.value)

    events = get_history(cfg, name)
    assert [(e["action"], e["version"]) for e in events][-2:] == [
        ("rollback", v2),
        ("rollback", v1),
    ]
    assert events[-2]["by"] == "bob"
    assert events[-2]["reason"] == "bad deploy"


def test_history_stays_under_the_tag_limit_and_replays_as_a_stack() -> None:
    events = [
        history.event(
            "promote",
            v,
            v - 1 if v > 1 else None,
            "2026-01-01T00:00:00+00:00",
            "ci",
            "x" * 500,
            False,
        )
        for v in range(1, 200)
    ]
    text = history.dump(events)
    assert len(text) <= history.MAX_CHARS
    kept = history.parse(text)
    assert kept[-1]["version"] == 199
    assert len(kept) < len(events)
    assert len(kept[-1]["reason"]) == history.MAX_REASON
    # Trimmed: the oldest kept promotion still knows the champion before it.
    assert history.champions(kept)[:2] == [kept[0]["previous"], kept[0]["version"]]

    stack = [
        history.event("promote", 1, None, "t", "u", None, False),
        history.event("promote", 2, 1, "t", "u", None, False),
        history.event("promote", 3, 2, "t", "u", None, False),
        history.event("rollback", 2, 3, "t", "u", None, False),
    ]
    assert history.champions(stack) == [1, 2]
    assert history.rollback_targets(stack, 2) == [1]
    assert history.parse("not json") == []


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("wine@champion", ("wine", "champion")),
        ("wine@3", ("wine", "3")),
        ("wine/3", ("wine", "3")),
        ("wine", ("wine", "champion")),
        ("models:/wine@staging", ("wine", "staging")),
    ],
)
def test_parse_ref(ref: str, expected: tuple[str, str]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "wine/x", "wine@a@b", "a b"])
def test_parse_ref_refuses_malformed_references(ref: str) -> None:
    with pytest.raises(UserError, match="malformed model reference"):
        parse_ref(ref)


# -- an S3 artifact store (moto's real S3 server) -----------------------------------------------


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on moto's S3 server; MLflow's S3 artifact repository pointed at it."""
    try:
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    except Exception as exc:  # an unusable moto is the only reason to skip
        pytest.skip(f"moto's S3 server cannot start: {exc}")
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    try:
        import boto3

        bucket = f"shipyard-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield bucket
    finally:
        server.stop()


def test_a_version_whose_package_is_on_s3_registers_and_fetches(trained, s3_bucket: str) -> None:
    cfg = trained.cfg("tracking.experiment=on-s3", f"tracking.artifacts=s3://{s3_bucket}/mlflow")
    client = tracking.client(cfg)
    source = client.get_run(trained.good)
    run = client.create_run(
        tracking.experiment_id(cfg),
        tags={k: v for k, v in source.data.tags.items() if k.startswith("shipyard.")},
    )
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(trained.home / "packages" / trained.good), "package")
    client.set_terminated(run_id)

    info = register(cfg, run_id, name="wine-s3")
    assert info.source == f"s3://{s3_bucket}/mlflow/{run_id}/artifacts/package"
    package, _ = fetch_package(cfg, f"wine-s3/{info.version}")
    assert package.path == trained.home / "registry" / "wine-s3" / str(info.version)
    assert package.manifest.lineage.run_id == trained.good
    assert promote(cfg, "wine-s3", info.version).version == info.version
