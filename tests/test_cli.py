"""The CLI as a user meets it: a real subprocess, exit codes and what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_help_is_instant_because_heavy_imports_are_lazy() -> None:
    code = (
        "import sys, shipyard.cli;"
        "heavy = [m for m in ('torch', 'lightning', 'mlflow', 'pandas', 'sklearn') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "pipeline" in result.stdout
    # Generous bound: the point is "no torch import", which alone takes seconds.
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "prepare", "task=nope"], "unknown task 'nope'"),
        (["train", "model=nope"], "unknown model 'nope'"),
        (["train", "task=image", "model=mlp"], "does not fit task 'image'"),
        (["train", "trainer.max_epochs=[oops"], "malformed override"),
        (
            ["data", "prepare", "task=image", "data=folder", "data.path=/does/not/exist"],
            "does not exist",
        ),
        (["data", "prepare", "task=tabular", "data=csv"], "data.path is required"),
        (["data", "show", "feedbeef"], "no snapshot 'feedbeef'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(cli: Cli, args: list[str], expected: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_data_prepare_list_show_with_json(cli: Cli) -> None:
    prepared = cli("data", "prepare", "task=tabular", "--json")
    assert prepared.returncode == 0, prepared.stderr
    summary = json.loads(prepared.stdout)
    assert summary["rows"] == 178
    assert summary["splits"] == {"train": 124, "val": 27, "test": 27}

    listed = json.loads(cli("data", "list", "--json").stdout)
    assert [s["id"] for s in listed["snapshots"]] == [summary["snapshot_id"]]

    shown = json.loads(cli("data", "show", summary["snapshot_id"][:6], "--json").stdout)
    assert shown["schema"]["target"]["labels"] == ["class_0", "class_1", "class_2"]

    table = cli("data", "show", summary["snapshot_id"])
    assert table.returncode == 0
    assert "class balance" in table.stdout


def test_config_show_prints_the_resolved_config(cli: Cli) -> None:
    result = cli("config", "show", "task=tabular", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["family"] == "mlp"
