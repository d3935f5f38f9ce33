"""Container images of a registered model: ``shipyard image build NAME@ALIAS``.

The serve image is built from a *context* that Shipyard stages: the project (pyproject,
lock, ``src/``), the model package fetched from the registry and verified against its
checksums (under ``model/``) and ``deploy/docker/serve.Dockerfile``. Staging first means the
build needs no access to the registry (no tracking URI or credentials inside a build) and
CI builds exactly what a laptop builds: ``shipyard image context`` stages, any builder
(buildx, kaniko, podman) builds.

The engine is podman or Docker's CLI, whichever is installed (``--engine`` to choose); the
base image is a build argument so that machines without a registry build from a local
stand-in (``scripts/base-image.sh``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import UserError
from shipyard.export.package import MANIFEST, sha256_file

ENGINES = ("podman", "docker")
DEFAULT_BASE = "python:3.11-slim"
DEFAULT_REPOSITORY = "shipyard-serve"
DOCKERFILE = Path("deploy/docker/serve.Dockerfile")
#: what of the project goes into the context: enough to `pip install .[serve]` from the lock
PROJECT_FILES = ("pyproject.toml", "constraints.txt", "README.md")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")
#: Docker's reference grammar, simplified: lowercase repository, a tag of word characters
_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageError(UserError):
    """The image could not be staged or built; the message says what to do."""


@dataclass(frozen=True)
class Context:
    """A staged build context and what it holds."""

    path: Path
    name: str
    version: str
    #: the package manifest's SHA-256: the served version is claimed only for this manifest
    digest: str
    tag: str

    @property
    def dockerfile(self) -> Path:
        return self.path / "Dockerfile"

    @property
    def build_args(self) -> dict[str, str]:
        """What serve.Dockerfile records as the served model's identity."""
        return {
            "SHIPYARD_MODEL_NAME": self.name,
            "SHIPYARD_MODEL_VERSION": self.version,
            "SHIPYARD_MODEL_DIGEST": self.digest,
        }


def project_root(start: Path | None = None) -> Path:
    """The Shipyard source checkout this code runs from (an editable install)."""
    here = (start or Path(__file__)).resolve()
    for folder in here.parents:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "shipyard"' in pyproject.read_text():
            return folder
    raise ImageError(
        "building an image needs Shipyard's source checkout (pyproject.toml, constraints.txt, "
        "src/): install it with `pip install -e .` from a clone and run the command there"
    )


def image_tag(name: str, version: int | str, repository: str = DEFAULT_REPOSITORY) -> str:
    """``shipyard-serve:digits-3``: the model's name and version say what the image serves."""
    tag = f"{name}-{version}".lower()
    check_reference(f"{repository}:{tag}")
    return f"{repository}:{tag}"


def check_reference(reference: str) -> str:
    """A one-line error for a tag that no engine would accept."""
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:  # no tag given: ``repo`` or ``host:port/repo``
        repository, tag = reference, "latest"
    if not _REPOSITORY.match(repository) or not _TAG.match(tag):
        raise ImageError(
            f"invalid image reference {reference!r}: expected REPOSITORY[:TAG] in lowercase, "
            "like shipyard-serve:digits-3 or ghcr.io/acme/digits:v3"
        )
    return reference


def stage_context(
    package_dir: Path,
    destination: Path,
    *,
    name: str,
    version: int | str,
    tag: str,
    root: Path | None = None,
) -> Context:
    """Copy the project, the package and the Dockerfile into ``destination`` (staged, renamed).

    ``destination`` must not exist or be empty: staging never overwrites a user's folder.
    """
    root = root or project_root()
    if destination.exists() and any(destination.iterdir()):
        raise ImageError(f"{destination} is not empty: give a new folder for the build context")
    if not (package_dir / "manifest.json").is_file():
        raise ImageError(f"{package_dir} is not a model package (no manifest.json)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for project_file in PROJECT_FILES:
            shutil.copy2(root / project_file, staging / project_file)
        shutil.copytree(root / "src", staging / "src", ignore=_IGNORED)
        shutil.copytree(package_dir, staging / "model", ignore=_IGNORED)
        shutil.copy2(root / DOCKERFILE, staging / "Dockerfile")
        (staging / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
        if destination.exists():
            destination.rmdir()
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    digest = sha256_file(destination / "model" / MANIFEST)
    return Context(path=destination, name=name, version=str(version), digest=digest, tag=tag)


def find_engine(preferred: str | None = None) -> str:
    """The container engine's CLI: ``preferred`` if given, else podman, else docker."""
    if preferred and preferred not in ENGINES:
        raise ImageError(f"unknown engine {preferred!r}: choose one of {', '.join(ENGINES)}")
    for engine in [preferred] if preferred else ENGINES:
        if shutil.which(engine):
            return engine
    wanted = preferred or " or ".join(ENGINES)
    raise ImageError(
        f"no container engine found ({wanted}): install podman (apt-get install podman runc) "
        "or Docker, or stage the context with `shipyard image context` and build it elsewhere"
    )


def build_command(
    engine: str,
    context: Context,
    *,
    base: str,
    extras: str = "serve",
    ca_bundle: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The engine's build command line and its environment.

    ``ca_bundle`` is mounted read-only at the same path for the build only (a proxy that
    intercepts TLS); it is never copied into the image. Only podman can mount during a build.
    """
    command = [engine, "build"]
    env = dict(os.environ)
    if engine == "podman":
        # chroot isolation: builds inside an unprivileged or nested machine without a runtime
        command += ["--isolation=chroot", "--format", "docker"]
        if ca_bundle:
            command += ["-v", f"{ca_bundle}:{ca_bundle}:ro", "--build-arg", f"PIP_CERT={ca_bundle}"]
    elif ca_bundle:
        raise ImageError("--ca-bundle needs podman (docker build cannot mount files)")
    else:
        # Docker's CLI builds with BuildKit through its buildx plugin; where the plugin is
        # missing (Debian's docker.io) only the legacy builder works, and must be asked for.
        env.setdefault("DOCKER_BUILDKIT", "1" if _has_buildx(engine) else "0")
    if not re.fullmatch(r"[a-z0-9_-]+(,[a-z0-9_-]+)*", extras) or "serve" not in extras.split(","):
        raise ImageError(f"invalid extras {extras!r}: expected serve plus others, like serve,s3")
    for key, value in {"BASE": base, "EXTRAS": extras, **context.build_args}.items():
        command += ["--build-arg", f"{key}={value}"]
    command += [
        "-t",
        context.tag,
        "-f",
        str(context.dockerfile),
        str(context.path),
    ]
    return command, env


def _has_buildx(engine: str) -> bool:
    try:
        probe = subprocess.run(
            [engine, "buildx", "version"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def build(
    engine: str,
    context: Context,
    *,
    base: str,
    extras: str = "serve",
    ca_bundle: Path | None = None,
) -> dict[str, Any]:
    """Run the build, its log on stderr; returns the tag, image id and size."""
    command, env = build_command(engine, context, base=base, extras=extras, ca_bundle=ca_bundle)
    result = subprocess.run(command, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if result.returncode != 0:
        raise ImageError(
            f"{engine} build failed (exit {result.returncode}; its log is above). The context is "
            f"kept at {context.path}: rebuild with `{' '.join(command)}`"
        )
    return {"tag": context.tag, **inspect(engine, context.tag)}


def inspect(engine: str, reference: str) -> dict[str, Any]:
    """The image's id and size in bytes (what the docs' size table reports)."""
    out = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ImageError(f"{engine} cannot inspect {reference}: {out.stderr.strip()}")
    image_id, size = out.stdout.split()
    return {"id": image_id, "size_bytes": int(size)}
