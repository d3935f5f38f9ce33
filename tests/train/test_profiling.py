"""``profile=true``: a torch.profiler trace of a few real training steps, attached to the run,
and a table of the top operations on stderr."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from shipyard.track import tracking
from shipyard.train.profiling import ARTIFACT_DIR, TRACE_FILE, WAIT_STEPS, WARMUP_STEPS
from shipyard.train.run import train

STEPS = 3


def _table_ops(stderr: str) -> list[str]:
    """The operation column of the printed table (rows look like ``│ aten::add │ 3 │ ...``)."""
    ops = []
    for line in stderr.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) >= 6 and re.fullmatch(r"\d+", cells[2]):
            ops.append(cells[1])
    return ops


def test_profiled_training_attaches_a_trace_and_prints_the_top_ops(
    cli: Callable[..., subprocess.CompletedProcess[str]], home: Path, tmp_path: Path
) -> None:
    done = cli(
        "train", "task=image", "trainer=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=1", "profile=true",
        f"profile_steps={STEPS}", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]  # stdout stays one JSON object

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    listed = [item.path for item in client.list_artifacts(run_id, ARTIFACT_DIR)]
    assert listed == [f"{ARTIFACT_DIR}/{TRACE_FILE}"]
    local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{TRACE_FILE}", str(tmp_path))
    trace = json.loads(Path(local).read_text())

    # Chrome trace-event format, as Perfetto and TensorBoard read it: complete ("X") events
    # with a name, a start and a duration; one ProfilerStep per recorded step.
    events = trace["traceEvents"]
    complete = [e for e in events if e.get("ph") == "X"]
    assert len(complete) > 100
    assert all({"name", "ts", "dur"} <= e.keys() for e in complete)
    steps = sorted(e["name"] for e in complete if e["name"].startswith("ProfilerStep#"))
    first = WAIT_STEPS + WARMUP_STEPS
    assert steps == [f"ProfilerStep#{i}" for i in range(first, first + STEPS)]
    names = {e["name"] for e in complete}
    assert "aten::convolution" in names  # the CNN's forward pass was recorded
    assert "aten::convolution_backward" in names  # and its backward pass

    ops = _table_ops(done.stderr)
    assert len(ops) == 15, done.stderr
    # Every operation in the table is one the trace recorded (ProfilerStep* is the table's
    # name for the ProfilerStep#N spans), and the convolutions are among the top ones.
    assert {op for op in ops if op != "ProfilerStep*"} <= names, set(ops) - names
    assert any("convolution" in op for op in ops), ops
    assert f"Top operations over {STEPS} profiled steps" in done.stderr
    assert f"artifact {ARTIFACT_DIR}/{TRACE_FILE} of run {run_id}" in done.stderr
    assert "USDT" not in done.stderr  # the profiler's C++ chatter is kept off the terminal


def test_profiling_a_training_too_short_to_record_warns_and_attaches_nothing(
    compose: Callable[..., DictConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose(
        "task=tabular", "trainer=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "profile=true",
    )  # fmt: skip
    result = train(cfg)
    err = capsys.readouterr().err
    assert "profile=true but no step was recorded: the training ran 1 steps" in err
    assert tracking.client(cfg).list_artifacts(result.run_id, ARTIFACT_DIR) == []
    assert tracking.get_run(cfg, result.run_id).info.status == "FINISHED"
