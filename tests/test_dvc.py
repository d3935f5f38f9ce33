"""The repository's dvc.yaml and params.yaml, run by real DVC the way a team would: in a
fresh git + DVC project with a local remote, `dvc repro` runs every stage on a quick
tabular config, `dvc metrics show` reads the test metrics, `dvc push` / `dvc pull` move the
snapshot store and the model packages, a second `dvc repro` has nothing to do, and a
changed param marks the train stage (not prepare) as changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("dvc", reason="dvc is not installed (it is in the `dev` extra)")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "export", "register")
# A quick run: the bundled wine table, one epoch, no int8 graph ("null" quoted: DVC
# would write a YAML null into the cmd as "None").
QUICK = {"task": "tabular", "trainer": {"max_epochs": 1}, "quantize": "null"}


@dataclass
class Project:
    root: Path
    remote: Path
    env: dict[str, str]
    first_repro: str = ""  # what the first `dvc repro` printed

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command in the project; fail the test with its output if it fails."""
        done = subprocess.run(
            list(args),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done

    def dvc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args, timeout=timeout)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args, timeout=60)

    def stage_json(self, stage: str) -> dict[str, Any]:
        data = json.loads((self.root / "stages" / f"{stage}.json").read_text())
        assert isinstance(data, dict)
        return data

    def set_params(self, changes: dict[str, Any]) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(_merge(params, changes), sort_keys=False))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A git + DVC project holding the repository's pipeline files, reproduced once."""
    base = tmp_path_factory.mktemp("dvc")
    root, remote = base / "project", base / "remote"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    (root / ".gitignore").write_text("/.shipyard/\n")
    env = {key: value for key, value in os.environ.items() if key != "SHIPYARD_HOME"}
    env |= {
        # The venv's `shipyard` is what the stages' cmds call.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "1",
        "DVC_SITE_CACHE_DIR": str(base / "dvc-site-cache"),
        "DVC_GLOBAL_CONFIG_DIR": str(base / "dvc-global"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,  # no signing or hooks from the user's git config
        "COLUMNS": "200",
    }
    project = Project(root, remote, env)
    project.git("init", "-q")
    project.dvc("init", "-q")
    project.dvc("remote", "add", "-d", "local", str(remote))
    project.set_params(QUICK)
    repro = project.dvc("repro", timeout=900)
    project.first_repro = repro.stdout + repro.stderr
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "pipeline reproduced")
    return project


def test_repro_runs_every_stage_and_writes_its_outputs(project: Project) -> None:
    log = project.first_repro
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log, log

    prepare, train, export, register = (project.stage_json(s) for s in STAGES)
    snapshot_id, run_id = prepare["snapshot_id"], train["run_id"]
    # Every stage continues the same chain: one snapshot, one run, that run's package.
    assert train["snapshot_id"] == export["snapshot_id"] == register["snapshot_id"] == snapshot_id
    assert export["run_id"] == register["run_id"] == run_id
    # Later stages re-enter the chain and reuse what the earlier DVC stages did.
    reused = {s["stage"]: s["reused"] for s in export["stages"]}
    assert reused == {"data": True, "train": True, "evaluate": True, "export": False}
    assert [s["stage"] for s in register["stages"]][-2:] == ["register", "promote"]
    assert register["model"]["version"] == register["champion"]["version"]

    home = project.root / ".shipyard"
    assert (home / "snapshots" / snapshot_id / "manifest.json").is_file()
    package = (project.root / export["package"]).resolve()
    assert package.parent == (home / "packages").resolve(), package
    assert (package / "manifest.json").is_file()

    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["train"]["params"]["params.yaml"]["trainer.max_epochs"] == 1


def test_metrics_show_reads_the_test_metrics(project: Project) -> None:
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    accuracy = files["stages/train.json"]["data"]["metrics"]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert files["stages/export.json"]["data"]["metrics"]["test_accuracy"] == accuracy


def test_push_sends_snapshots_and_packages_and_pull_brings_them_back(project: Project) -> None:
    project.dvc("push", timeout=300)
    pushed = [p for p in project.remote.rglob("*") if p.is_file()]
    snapshot_files = [
        p for p in (project.root / ".shipyard" / "snapshots").rglob("*") if p.is_file()
    ]
    assert len(pushed) >= len(snapshot_files) > 0
    assert json.loads(project.dvc("status", "--cloud", "--json").stdout) == {}

    # A teammate's clone: no local cache, no stores; `dvc pull` restores both.
    home = project.root / ".shipyard"
    saved = home.parent / "saved-shipyard"
    shutil.copytree(home, saved)
    try:
        shutil.rmtree(project.root / ".dvc" / "cache")
        for store in ("snapshots", "packages"):
            shutil.rmtree(home / store)
        project.dvc("pull", timeout=300)
        snapshot_id = project.stage_json("prepare")["snapshot_id"]
        assert (home / "snapshots" / snapshot_id / "manifest.json").is_file()
        assert (project.root / project.stage_json("export")["package"] / "manifest.json").is_file()
        assert json.loads(project.dvc("status", "--json").stdout) == {}
    finally:
        shutil.rmtree(home)
        shutil.move(saved, home)


def test_second_repro_has_nothing_to_do(project: Project) -> None:
    repro = project.dvc("repro", timeout=300)
    log = repro.stdout + repro.stderr
    assert "Running stage" not in log, log
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in log, log
    assert json.loads(project.dvc("status", "--json").stdout) == {}


def test_a_changed_param_marks_train_and_later_stages_changed(project: Project) -> None:
    params = project.root / "params.yaml"
    original = params.read_text()
    try:
        project.set_params({"trainer": {"max_epochs": 2}})
        status = json.loads(project.dvc("status", "--json").stdout)
        assert set(status) == {"train", "export", "register"}, status
        train_changes = [c for c in status["train"] if isinstance(c, dict)]
        assert {
            "changed deps": {"params.yaml": {"trainer.max_epochs": "modified"}}
        } in train_changes
        diff = json.loads(project.dvc("params", "diff", "--json").stdout)
        change = diff["params.yaml"]["trainer.max_epochs"]
        assert (change["old"], change["new"]) == (1, 2)
    finally:
        params.write_text(original)
    assert json.loads(project.dvc("status", "--json").stdout) == {}
