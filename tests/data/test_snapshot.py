"""The snapshot store on real filesystems: local disk, fsspec's memory filesystem, and S3
through moto's real server; failures are injected by a small fsspec filesystem of the
test's own, never by patching Shipyard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from omegaconf import DictConfig

from shipyard.data.prepare import build_manifest, build_reference, prepare, split_dataset
from shipyard.data.snapshot import MANIFEST, SPLITS, TMP, SnapshotStore
from shipyard.data.sources import load_source
from shipyard.errors import NotFoundError
from shipyard.tasks import get_task
from shipyard.tasks.base import Split

Compose = Callable[..., DictConfig]
Cli = Callable[..., subprocess.CompletedProcess[str]]


# -- what a prepare would write, built by the real functions ------------------------------


class Parts:
    """Splits, manifest and reference of one config, as ``prepare`` builds them."""

    def __init__(self, cfg: DictConfig) -> None:
        dataset = load_source(cfg.data)
        self.splits = split_dataset(dataset, cfg.data)
        self.reference = build_reference(
            get_task(cfg.task.name),
            self.splits["train"],
            cfg.data.reference_rows,
            cfg.data.split_seed,
        )
        self.manifest = build_manifest(
            dataset, self.splits, cfg, reference_rows=len(self.reference)
        )

    def write(self, store: SnapshotStore, **manifest: Any) -> tuple[Any, bool]:
        return store.write(self.splits, {**self.manifest, **manifest}, self.reference)


@pytest.fixture
def wine(compose: Compose) -> Parts:
    return Parts(compose("task=tabular"))


def assert_same_splits(snapshot: Any, splits: dict[str, Split]) -> None:
    for name in SPLITS:
        loaded = snapshot.load(name)
        np.testing.assert_array_equal(loaded.target, splits[name].target)
        assert loaded.target.dtype == splits[name].target.dtype
        if isinstance(splits[name].features, np.ndarray):
            assert loaded.features.dtype == splits[name].features.dtype
            np.testing.assert_array_equal(loaded.features, splits[name].features)
        else:
            pd.testing.assert_frame_equal(loaded.features, splits[name].features)


def files_under(fs: Any, path: str) -> list[str]:
    return sorted(fs.find(path)) if fs.exists(path) else []


# -- local disk --------------------------------------------------------------------------


def test_local_store_round_trip_and_layout(compose: Compose, home: Path) -> None:
    cfg = compose("task=image")
    parts = Parts(cfg)
    result = prepare(cfg)
    assert not result.reused
    root = home / "snapshots"
    folder = root / result.snapshot.id
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "manifest.json",
        "reference/features.parquet",
        "test/features.npy",
        "test/target.npy",
        "train/features.npy",
        "train/target.npy",
        "val/features.npy",
        "val/target.npy",
    ]
    assert json.loads((folder / MANIFEST).read_text()) == result.snapshot.manifest
    store = SnapshotStore(str(root))
    assert_same_splits(store.get(result.snapshot.id), parts.splits)
    pd.testing.assert_frame_equal(store.get(result.snapshot.id).reference(), parts.reference)
    # Nothing staged is left behind.
    assert [p for p in (root / TMP).rglob("*") if p.is_file()] == []


def test_writing_an_existing_id_reuses_it_and_overwrites_nothing(
    wine: Parts, tmp_path: Path
) -> None:
    store = SnapshotStore(str(tmp_path / "store"))
    first, reused = wine.write(store, created_at="2020-01-01T00:00:00+00:00")
    assert not reused
    manifest_file = tmp_path / "store" / first.id / MANIFEST
    before = manifest_file.stat().st_mtime_ns
    second, reused = wine.write(store, created_at="2030-01-01T00:00:00+00:00", note="second")
    assert reused
    assert second.id == first.id
    assert second.manifest["created_at"] == "2020-01-01T00:00:00+00:00"
    assert "note" not in second.manifest
    assert manifest_file.stat().st_mtime_ns == before
    assert [m["id"] for m in store.list()] == [first.id]


def test_remains_of_an_interrupted_copy_are_replaced(wine: Parts, tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path / "store"))
    snapshot_id = wine.manifest["id"]
    partial = tmp_path / "store" / snapshot_id / "train"
    partial.mkdir(parents=True)
    (partial / "target.npy").write_bytes(b"half a file")  # no manifest: not a snapshot
    assert store.list() == []
    _, reused = wine.write(store)
    assert not reused
    assert_same_splits(store.get(snapshot_id), wine.splits)
    assert sorted(p.name for p in (tmp_path / "store" / snapshot_id).iterdir()) == [
        "manifest.json",
        "reference",
        "test",
        "train",
        "val",
    ]


class RacyLocalFileSystem(LocalFileSystem):
    """A local disk where another writer finishes the same snapshot between the last
    existence check and the rename (``on_check`` runs once, after that check)."""

    protocol = "racylocal"
    on_check: ClassVar[Callable[[], None] | None] = None
    checks_of_final_manifest: ClassVar[int] = 0

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix("racylocal://")
        return super()._strip_protocol(path)

    def exists(self, path: Any, **kwargs: Any) -> bool:
        found = bool(super().exists(path, **kwargs))
        cls = type(self)
        if str(path).endswith(MANIFEST) and f"/{TMP}/" not in str(path):
            cls.checks_of_final_manifest += 1
            if cls.checks_of_final_manifest == 2 and cls.on_check is not None:
                cls.on_check()  # the other writer lands now, after we looked
        return found


def test_local_rename_loses_to_a_concurrent_writer_without_overwriting(
    wine: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsspec.register_implementation("racylocal", RacyLocalFileSystem, clobber=True)
    root = tmp_path / "store"
    winner = SnapshotStore(str(root))
    monkeypatch.setattr(RacyLocalFileSystem, "checks_of_final_manifest", 0)
    monkeypatch.setattr(
        RacyLocalFileSystem,
        "on_check",
        lambda: wine.write(winner, created_at="winner"),
    )
    loser = SnapshotStore(f"racylocal://{root}")
    snapshot, reused = wine.write(loser, created_at="loser")
    assert RacyLocalFileSystem.checks_of_final_manifest >= 2
    assert reused
    assert snapshot.manifest["created_at"] == "winner"
    stored = json.loads((root / wine.manifest["id"] / MANIFEST).read_text())
    assert stored["created_at"] == "winner"
    # The loser's staging folder did not end up inside the winner's snapshot.
    assert sorted(p.name for p in (root / wine.manifest["id"]).iterdir()) == [
        "manifest.json",
        "reference",
        "test",
        "train",
        "val",
    ]
    assert [p for p in (root / TMP).rglob("*") if p.is_file()] == []


# -- listing and lookup ---------------------------------------------------------------------


def tiny_parts(rows: int = 4) -> tuple[dict[str, Split], pd.DataFrame]:
    split = Split(features=np.zeros((rows, 2, 2, 1), np.uint8), target=np.arange(rows) % 2)
    return dict.fromkeys(SPLITS, split), pd.DataFrame({"brightness": [0.0], "target": [0]})


def write_manifest(store: SnapshotStore, snapshot_id: str, created_at: str) -> None:
    splits, reference = tiny_parts()
    manifest = {"id": snapshot_id, "created_at": created_at, "kind": "image"}
    store.write(splits, manifest, reference)


def test_list_ignores_hidden_staging_and_incomplete_folders(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    assert store.list() == []  # the root does not exist yet
    write_manifest(store, "aaaa000000000001", "2024-01-01T00:00:00+00:00")
    write_manifest(store, "bbbb000000000002", "2024-06-01T00:00:00+00:00")
    staged = root / TMP / "cccc000000000003-1234abcd"
    staged.mkdir(parents=True)
    (staged / MANIFEST).write_text(json.dumps({"id": "cccc000000000003", "created_at": "x"}))
    (root / ".hidden").mkdir()
    (root / ".hidden" / MANIFEST).write_text(json.dumps({"id": ".hidden", "created_at": "y"}))
    (root / "dddd000000000004" / "train").mkdir(parents=True)  # no manifest
    (root / "README.txt").write_text("a stray file")
    assert [m["id"] for m in store.list()] == [
        "bbbb000000000002",
        "aaaa000000000001",
    ]  # newest first
    for ref in ("cccc000000000003", "dddd000000000004", ".hidden", f"{TMP}/{staged.name}"):
        with pytest.raises(NotFoundError):
            store.get(ref)


def test_get_by_id_and_prefix_with_one_line_errors(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path / "store"))
    write_manifest(store, "abcd111100000000", "2024-01-01T00:00:00+00:00")
    write_manifest(store, "abcd222200000000", "2024-01-02T00:00:00+00:00")
    assert store.get("abcd111100000000").id == "abcd111100000000"
    assert store.get("abcd2").id == "abcd222200000000"
    assert store.get("  abcd1111 ").id == "abcd111100000000"
    cases = {
        "abcd": "snapshot prefix 'abcd' is ambiguous (abcd",
        "ffff": "no snapshot 'ffff' in",
        "abc": "a prefix needs at least 4 characters",
        "": "no snapshot ''",
        "../store/abcd111100000000": "no snapshot '../store/abcd111100000000'",
    }
    for ref, expected in cases.items():
        with pytest.raises(NotFoundError) as exc:
            store.get(ref)
        assert expected in str(exc.value)
        assert "\n" not in str(exc.value)
        assert "shipyard data list" in str(exc.value) or "ambiguous" in str(exc.value)


def test_unknown_split_is_not_found(wine: Parts, tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path / "store"))
    snapshot, _ = wine.write(store)
    with pytest.raises(
        NotFoundError, match="unknown split 'holdout': choose one of train, val, test"
    ):
        snapshot.load("holdout")


# -- fsspec's in-memory filesystem -------------------------------------------------------------


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://snapshots-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_store_prepare_list_get_load(compose: Compose, memory_url: str) -> None:
    cfg = compose("task=image", f"paths.snapshots={memory_url}")
    parts = Parts(cfg)
    first = prepare(cfg)
    again = prepare(cfg)
    assert not first.reused
    assert again.reused
    assert again.snapshot.id == first.snapshot.id
    store = SnapshotStore(memory_url)
    assert [m["id"] for m in store.list()] == [first.snapshot.id]
    got = store.get(first.snapshot.id[:6])
    assert got.manifest == first.snapshot.manifest
    assert_same_splits(got, parts.splits)
    pd.testing.assert_frame_equal(got.reference(), parts.reference)
    assert files_under(store.fs, f"{store.root}/{TMP}") == []
    # Content-addressed: the same data gives the same id in any store.
    assert prepare(compose("task=image")).snapshot.id == first.snapshot.id


def test_memory_store_tables_round_trip(compose: Compose, memory_url: str) -> None:
    cfg = compose("task=tabular", f"paths.snapshots={memory_url}")
    parts = Parts(cfg)
    result = prepare(cfg)
    assert_same_splits(SnapshotStore(memory_url).get(result.snapshot.id), parts.splits)


# -- failures midway leave nothing -------------------------------------------------------------


def failing_filesystem(
    fail_on: int | None, on_write: Callable[[str], None] | None = None
) -> type[MemoryFileSystem]:
    """A fresh in-memory filesystem (own store, own protocol) whose ``fail_on``-th file
    write (an open for writing or a copy) raises OSError; ``writes`` counts them and
    ``on_write`` (if given) sees each path before it is written."""
    protocol = f"failing{uuid.uuid4().hex[:8]}"

    class FailingFileSystem(MemoryFileSystem):
        store: ClassVar[dict[str, Any]] = {}  # type: ignore[misc]
        pseudo_dirs: ClassVar[list[str]] = [""]  # type: ignore[misc]
        writes: ClassVar[int] = 0

        @classmethod
        def _strip_protocol(cls, path: Any) -> Any:
            if isinstance(path, str):
                path = path.removeprefix(f"{protocol}://")
            return super()._strip_protocol(path)

        def _count_write(self, path: str) -> None:
            cls = type(self)
            cls.writes += 1
            if on_write is not None:
                on_write(path)
            if cls.writes == fail_on:
                raise OSError(f"injected failure on write {cls.writes} ({path})")

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            if any(flag in mode for flag in "wxa"):
                self._count_write(path)
            return super()._open(path, mode, **kwargs)

        def cp_file(self, path1: str, path2: str, **kwargs: Any) -> Any:
            self._count_write(path2)
            return super().cp_file(path1, path2, **kwargs)

    FailingFileSystem.protocol = protocol
    fsspec.register_implementation(protocol, FailingFileSystem, clobber=True)
    return FailingFileSystem


def test_a_write_failing_at_any_step_leaves_no_snapshot_and_no_staging(wine: Parts) -> None:
    clean = failing_filesystem(fail_on=None)
    snapshot, _ = wine.write(SnapshotStore(f"{clean.protocol}://snapshots"))
    total = clean.writes
    assert total == 16  # 8 files staged, then 8 copied into place (no rename in memory)
    assert_same_splits(snapshot, wine.splits)

    for fail_on in range(1, total + 1):
        fs_class = failing_filesystem(fail_on)
        store = SnapshotStore(f"{fs_class.protocol}://snapshots")
        with pytest.raises(OSError, match=f"injected failure on write {fail_on} "):
            wine.write(store)
        assert store.list() == [], fail_on
        assert not store.exists(wine.manifest["id"]), fail_on
        assert files_under(store.fs, store.root) == [], (fail_on, store.fs.find(store.root))
        # A retry on the same store then succeeds and is complete.
        snapshot, reused = wine.write(store)
        assert not reused
        assert_same_splits(store.get(snapshot.id), wine.splits)


def test_prepare_failing_midway_leaves_nothing(compose: Compose) -> None:
    fs_class = failing_filesystem(fail_on=5)
    url = f"{fs_class.protocol}://snapshots"
    cfg = compose("task=tabular", f"paths.snapshots={url}")
    with pytest.raises(OSError, match="injected failure on write 5"):
        prepare(cfg)
    store = SnapshotStore(url)
    assert store.list() == []
    assert files_under(store.fs, store.root) == []
    assert not prepare(cfg).reused  # nothing half-written was taken for a snapshot


def test_a_concurrent_writer_of_the_same_id_wins_and_is_not_overwritten(wine: Parts) -> None:
    fired: list[str] = []

    def race(path: str) -> None:
        # When our staged manifest is written, another writer publishes the same id.
        if path.endswith(MANIFEST) and f"/{TMP}/" in path and not fired:
            fired.append(path)
            wine.write(SnapshotStore(url), created_at="winner")

    fs_class = failing_filesystem(fail_on=None, on_write=race)
    url = f"{fs_class.protocol}://snapshots"
    store = SnapshotStore(url)
    snapshot, reused = wine.write(store, created_at="loser")
    assert fired
    assert reused
    assert snapshot.manifest["created_at"] == "winner"
    assert store.get(snapshot.id).manifest["created_at"] == "winner"
    assert [m["id"] for m in store.list()] == [snapshot.id]
    assert files_under(store.fs, f"{store.root}/{TMP}") == []
    assert_same_splits(snapshot, wine.splits)


# -- S3 through moto's real server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free local port (the real S3 API over HTTP)."""
    try:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    except Exception as exc:  # an unusable moto is the only reason to skip
        pytest.skip(f"moto's S3 server cannot start: {exc}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; s3fs pointed at moto in this process (fsspec config) and in CLI
    subprocesses (the FSSPEC_S3_ENDPOINT_URL variable fsspec reads at import)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    bucket = f"shipyard-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}/snapshots"


def test_s3_store_prepare_reuse_list_get_load(compose: Compose, s3_store: str) -> None:
    cfg = compose("task=tabular", f"paths.snapshots={s3_store}")
    parts = Parts(cfg)
    first = prepare(cfg)
    assert not first.reused
    again = prepare(cfg)
    assert again.reused
    assert again.snapshot.id == first.snapshot.id
    store = SnapshotStore(s3_store)
    assert [m["id"] for m in store.list()] == [first.snapshot.id]
    got = store.get(first.snapshot.id[:5])
    assert got.manifest == first.snapshot.manifest
    assert_same_splits(got, parts.splits)
    pd.testing.assert_frame_equal(got.reference(), parts.reference)
    keys = [k.split("/snapshots/", 1)[1] for k in store.fs.find(store.root)]
    assert sorted(keys) == sorted(
        f"{first.snapshot.id}/{name}"
        for name in (
            "manifest.json",
            "reference/features.parquet",
            *(f"{s}/{f}" for s in SPLITS for f in ("features.parquet", "target.npy")),
        )
    )


def test_s3_store_through_the_cli(cli: Cli, compose: Compose, s3_store: str) -> None:
    assert os.environ["FSSPEC_S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    store = f"paths.snapshots={s3_store}"
    prepared = cli("data", "prepare", "task=tabular", store, "--json")
    assert prepared.returncode == 0, prepared.stderr
    summary = json.loads(prepared.stdout)
    assert summary["store"] == s3_store
    assert not summary["reused"]

    listed = cli("data", "list", store, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)["snapshots"]] == [summary["snapshot_id"]]

    shown = cli("data", "show", summary["snapshot_id"][:6], store, "--json")
    assert shown.returncode == 0, shown.stderr
    manifest = json.loads(shown.stdout)
    assert manifest["id"] == summary["snapshot_id"]
    assert manifest["source"]["name"] == "wine"

    # The subprocess wrote real objects: this process reads them back, and reuses them.
    assert SnapshotStore(s3_store).get(summary["snapshot_id"]).manifest == manifest
    again = prepare(compose("task=tabular", store))
    assert again.reused
    assert again.snapshot.id == summary["snapshot_id"]
