"""Where Shipyard keeps its state.

All state — snapshots, the tracking store, later the registry and the prediction log —
lives under one home folder so that a project is one directory to back up or delete.
This is the one place that reads the environment for it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SHIPYARD_HOME"
DEFAULT_HOME = ".shipyard"


def shipyard_home() -> Path:
    """The home folder: ``$SHIPYARD_HOME``, else ``.shipyard/`` in the working directory (absolute)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
