"""``shipyard sweep`` end to end: real Optuna storage, real MLflow store, real trainings on
the bundled digits (tiny: trainer=fast and a few batches per epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import DictConfig
from optuna.trial import TrialState

from shipyard.sweep.settings import load_settings
from shipyard.sweep.study import ATTR_PARENT_RUN, ATTR_WORKER, open_study
from shipyard.track import tracking

# Cheap trials: two epochs of five batches.
CHEAP = ("task=image", "trainer=fast", "trainer.limit_train_batches=5")
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trials", "0"), "--trials must be at least 1, got 0"),
        (("--jobs", "0"), "--jobs must be at least 1, got 0"),
        (
            ("+sweep.space.model.lrr={type: float, low: 0.1, high: 1}",),
            "sweep.space: unknown config key 'model.lrr'",
        ),
        (
            ("sweep.space.model.lr.low=0.1",),
            "sweep.space.model.lr: low (0.1) must not be greater than high (0.01)",
        ),
        (("sweep=nope",), "unknown sweep 'nope': choose one of cnn, default"),
        (("trainer=ddp",), "a sweep cannot train with trainer.strategy=ddp"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    cli: Callable[..., subprocess.CompletedProcess[str]], args: tuple[str, ...], message: str
) -> None:
    assert message in one_line_error(cli("sweep", *args))


def _children(cfg: DictConfig, parent: str) -> list[Any]:
    return tracking.newest_runs(cfg, [f"tags.`mlflow.parentRunId` = '{parent}'"], 100)


@pytest.mark.slow
def test_sweep_nests_runs_selects_on_validation_and_the_experiment_reproduces(
    home: Path, compose: Callable[..., DictConfig]
) -> None:
    from shipyard.sweep.run import run_sweep
    from shipyard.train.run import train

    result = run_sweep([*CHEAP, "sweep.pruner.type=none"], trials=2).summary()
    assert result["counts"] == {"COMPLETE": 2}
    assert not result["parent_reused"]
    cfg = compose()
    parent = tracking.get_run(cfg, result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["shipyard.sweep.study"] == result["study"]
    children = _children(cfg, result["parent_run_id"])
    assert len(children) == 2
    by_trial = {int(r.data.tags["shipyard.sweep.trial"]): r for r in children}
    for row in result["trials"]:
        run = by_trial[row["number"]]
        assert run.info.run_id == row["run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["shipyard.sweep.state"] == "COMPLETE"
        # The objective is the validation score of the best checkpoint, never the test one.
        assert row["value"] == pytest.approx(run.data.metrics["best_val_accuracy"])
        assert float(run.data.params["model.lr"]) == pytest.approx(row["params"]["model.lr"])
    best = max(result["trials"], key=lambda r: r["value"])
    assert result["best"]["number"] == best["number"]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best["value"])
    artifacts = {a.path for a in tracking.client(cfg).list_artifacts(result["parent_run_id"])}
    name = result["experiment"]
    assert {f"{name}.png", f"{name}.yaml", "trials.json"} <= artifacts

    path = Path(result["experiment_path"])
    assert path == home / "conf" / "experiment" / f"sweep-{result['study']}.yaml"
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.with_suffix(".png") == Path(result["plot"])
    reproduced = train(compose(f"experiment={name}"))
    assert reproduced.metrics["best_val_accuracy"] == pytest.approx(best["value"], abs=1e-6)
    run_cfg = tracking.download(cfg, reproduced.run_id, tracking.ARTIFACT_CONFIG).read_text()
    trial_cfg = tracking.download(cfg, best["run_id"], tracking.ARTIFACT_CONFIG).read_text()
    # The same config but the snapshot, which each trial pins and the experiment does not.
    assert _without_snapshot(run_cfg) == _without_snapshot(trial_cfg)


def _without_snapshot(config_yaml: str) -> list[str]:
    return [line for line in config_yaml.splitlines() if not line.startswith("snapshot:")]


@pytest.mark.slow
def test_bad_trials_are_pruned_and_their_runs_killed(
    home: Path, compose: Callable[..., DictConfig]
) -> None:
    from shipyard.sweep.run import run_sweep
    from shipyard.sweep.runs import ensure_parent

    overrides = [
        *CHEAP,
        "trainer.max_epochs=4",
        "sweep.study=pruning",
        "sweep.pruner.n_startup_trials=1",
        "sweep.pruner.n_warmup_steps=0",
        "sweep.space.model.weight_decay=null",
        "sweep.space.trainer.batch_size=null",
        "sweep.space.model.lr=null",  # then a new distribution in its place
        "++sweep.space.model.lr={type: categorical, choices: [0.01, 1.0e-7]}",
    ]
    settings = load_settings(overrides)
    study, created = open_study(settings, "pruning", "maximize", "accuracy")
    assert created
    # Set up as the worker that creates a study does, so run_sweep finds its parent run.
    ensure_parent(compose(), study, created=True, tags={})
    # A good trial first, then a learning rate that cannot learn in four epochs.
    study.enqueue_trial({"model.lr": 0.01})
    study.enqueue_trial({"model.lr": 1e-7})
    result = run_sweep(overrides, trials=2).summary()
    states = {row["params"]["model.lr"]: row for row in result["trials"]}
    assert states[0.01]["state"] == "COMPLETE"
    pruned = states[1e-7]
    assert pruned["state"] == "PRUNED"
    assert pruned["epochs_reported"] < 4
    assert pruned["last_reported"] < states[0.01]["value"]
    run = tracking.get_run(compose(), pruned["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["shipyard.sweep.state"] == "PRUNED"
    assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert result["best"]["params"] == {"model.lr": 0.01}


@pytest.mark.slow
def test_a_killed_sweep_resumes(home: Path, compose: Callable[..., DictConfig]) -> None:
    from shipyard.sweep.study import build_storage

    overrides = [*CHEAP, "trainer.max_epochs=4", "trainer.limit_train_batches=10"]
    args = ["sweep", *overrides, "sweep.pruner.type=none", "--trials", "3", "--json"]
    settings = load_settings([*overrides, "sweep.pruner.type=none"])
    name = settings.study_name()
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "shipyard", *args],
        env=env,
        cwd=home.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed, parent = None, None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                study = optuna.load_study(study_name=name, storage=build_storage(settings))
            except KeyError:  # not created yet
                time.sleep(0.5)
                continue
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state is TrialState.COMPLETE]
            running = [
                t
                for t in trials
                if t.state is TrialState.RUNNING
                and t.user_attrs.get(ATTR_WORKER)
                and t.intermediate_values  # mid-training: an epoch reported
            ]
            if done and running:
                worker.send_signal(signal.SIGKILL)
                killed, parent = running[0], study.user_attrs[ATTR_PARENT_RUN]
                break
            time.sleep(0.2)
    finally:
        if worker.poll() is None and killed is None:
            worker.kill()
        worker.wait(timeout=60)
    assert killed is not None, "the sweep finished (or died) before a trial could be killed"
    assert worker.returncode == -signal.SIGKILL

    study = optuna.load_study(study_name=name, storage=build_storage(settings))
    assert study.trials[killed.number].state is TrialState.RUNNING  # what the kill left behind

    rerun = subprocess.run(
        [sys.executable, "-m", "shipyard", *args],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["study"] == name
    assert result["parent_reused"]
    assert result["parent_run_id"] == parent
    assert result["recovered_trials"] == [killed.number]

    study = optuna.load_study(study_name=name, storage=build_storage(settings))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3
    assert states.count(TrialState.RUNNING) == 0
    assert study.trials[killed.number].state is TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1
    assert retried[0].state is TrialState.COMPLETE
    assert retried[0].params == killed.params

    cfg = compose()
    children = {r.data.tags["shipyard.sweep.trial"]: r for r in _children(cfg, parent)}
    assert children[str(killed.number)].info.status == "KILLED"
    assert children[str(killed.number)].data.tags["shipyard.sweep.state"] == "FAIL"
    complete = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert {children[str(t.number)].info.run_id for t in complete} == {
        t.user_attrs["shipyard.run_id"] for t in complete
    }
    assert tracking.get_run(cfg, parent).info.status == "FINISHED"


def _postgres_answers() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:  # the reason goes into the skip message
        return f"PostgreSQL at 127.0.0.1:5432/test does not answer: {str(exc).splitlines()[0]}"


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(
    home: Path,
    compose: Callable[..., DictConfig],
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    reason = _postgres_answers()
    if reason:
        pytest.skip(reason)
    name = f"shipyard-test-{uuid.uuid4().hex[:12]}"
    # What a team's shared stores already hold: the snapshot and the MLflow experiment.
    assert cli("data", "prepare", "task=image").returncode == 0
    tracking.experiment_id(compose())
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    base = ["sweep", *CHEAP, "trainer.max_epochs=3", f"sweep.study={name}"]
    base += [f"sweep.storage={PG_URL}", "sweep.pruner.type=none"]
    flags = ["--trials", "4", "--jobs", "1", "--json"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "shipyard", *base, f"sweep.sampler.seed={seed}", *flags],
            env=env,
            cwd=home.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    try:
        outputs = [w.communicate(timeout=600) for w in workers]
        for worker, (_, stderr) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, stderr
        results = [json.loads(stdout) for stdout, _ in outputs]
        assert results[0]["parent_run_id"] == results[1]["parent_run_id"]
        assert {r["storage"] for r in results} == {PG_URL}
        study = optuna.load_study(study_name=name, storage=PG_URL)
        finished = [t for t in study.trials if t.state is TrialState.COMPLETE]
        assert len(finished) >= 4
        assert not [t for t in study.trials if t.state is TrialState.RUNNING]
        contributors = {t.user_attrs[ATTR_WORKER]["pid"] for t in finished}
        assert contributors == {w.pid for w in workers}
        children = _children(compose(), results[0]["parent_run_id"])
        assert {r.info.run_id for r in children} >= {
            t.user_attrs["shipyard.run_id"] for t in finished
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.slow
def test_jobs_start_workers_that_share_the_study(
    home: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    args = ["sweep", *CHEAP, "sweep.pruner.type=none", "--trials", "3", "--jobs", "2", "--json"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    (worker,) = summary["workers"]
    assert worker["exit_code"] == 0
    assert Path(worker["log"]).is_file()
    settings = load_settings([*CHEAP, "sweep.pruner.type=none"])
    study = optuna.load_study(study_name=summary["study"], storage=settings.storage_url())
    finished = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert len(finished) >= 3
    assert {t.user_attrs[ATTR_WORKER]["pid"] for t in finished} >= {worker["pid"]}
    assert len({t.user_attrs[ATTR_WORKER]["pid"] for t in finished}) == 2
    # Seeded apart: the workers' random start-up draws differ.
    drawn = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(drawn)) == len(drawn)
