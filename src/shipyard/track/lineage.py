"""Where a run came from (the git commit of the code that trained it) and the content
fingerprints that the pipeline's stage cache compares."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig


def git_commit(cwd: Path | None = None) -> str | None:
    """The checked-out commit, with ``-dirty`` when tracked files have changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


# The parts of Shipyard whose code decides what a stage produces. Editing the CLI or the
# registry must not retrain a model; editing a task, the trainer or a data source must.
# The packaged YAML (conf/) is not here: what it sets reaches a stage through the
# resolved config, which the fingerprints hash already, so a new `serve:` default does
# not retrain anything.
TRAINING_CODE = ("tasks", "train", "data", "config.py")
EXPORT_CODE = (*TRAINING_CODE, "export")


@functools.cache
def code_fingerprint(parts: tuple[str, ...] = TRAINING_CODE) -> str:
    """A hash of Shipyard's own source in ``parts`` (sub-packages or modules of the installed
    ``shipyard`` package: their ``.py``, ``.yaml`` and template files). Pipeline stages are
    cached on it, so that editing the code that trains or exports a model re-runs those
    stages, as DVC's code dependencies would.
    """
    import hashlib

    import shipyard

    root = Path(shipyard.__file__).parent
    digest = hashlib.sha256()
    for part in parts:
        base = root / part
        files = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in files:
            if path.suffix in {".py", ".yaml", ".j2"} and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# The config sections that decide what a training produces. `resume`, `snapshot` (the
# snapshot id is its own tag), `run`, `quantize`, `export`, `registry`, `pipeline` and
# `paths` do not change the trained weights, so changing them reuses the training.
TRAINING_KEYS = ("seed", "task", "data", "model", "trainer")


def training_fingerprint(cfg: DictConfig) -> str:
    """What a finished training is cached on (with its snapshot id): the training config
    sections and Shipyard's code."""
    from shipyard.config import to_container

    data = {key: value for key, value in to_container(cfg).items() if key in TRAINING_KEYS}
    return _short_hash({"config": data, "code": code_fingerprint()})


def export_fingerprint(cfg: DictConfig) -> str:
    """What an export is cached on (with its run id): the export config and Shipyard's code."""
    from shipyard.config import to_container

    data = to_container(cfg)
    return _short_hash(
        {
            "export": data.get("export"),
            "quantize": data.get("quantize"),
            "code": code_fingerprint(EXPORT_CODE),
        }
    )


def _short_hash(data: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
