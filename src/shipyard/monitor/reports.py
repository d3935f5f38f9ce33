"""Where drift runs leave their results: ``<paths.home>/monitoring/drift/``.

::

    latest.json                      the newest summary (what the server reads and serves)
    latest.html                      the newest Evidently report (GET /monitoring/drift)
    drift-<UTC time>.json / .html    one pair per run, the newest monitor.keep_reports kept

Every file is written to a temporary name in the same folder and renamed into place, so a
reader (the server, a browser) sees the previous complete file or the new complete file,
never half of one. The timestamped pair is written first and ``latest.*`` last, HTML
before JSON, so ``latest.json`` never points at a report that is not there yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    from shipyard.monitor.drift import DriftSummary

LATEST_JSON = "latest.json"
LATEST_HTML = "latest.html"
PREFIX = "drift-"


def drift_folder(home: Path) -> Path:
    """``<home>/monitoring/drift``: where drift reports are written (and the server reads them)."""
    return Path(home) / "monitoring" / "drift"


def drift_dir(cfg: DictConfig) -> Path:
    """:func:`drift_folder` of the config's ``paths.home``."""
    return drift_folder(Path(str(cfg.paths.home)))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        Path(staging).chmod(0o644)  # mkstemp's 0600 would hide reports from a web server
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(staging).replace(path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_reports(
    cfg: DictConfig, summary: DriftSummary, snapshot: Any, keep: int, started: float
) -> DriftSummary:
    """Write the Evidently report and the summary (timestamped, then ``latest.*``), prune
    old runs, and return the summary with the report paths and the run's duration."""
    folder = drift_dir(cfg)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    html_path = folder / f"{PREFIX}{stamp}.html"
    json_path = folder / f"{PREFIX}{stamp}.json"
    html = snapshot.get_html_str(as_iframe=False).encode()
    write_atomic(html_path, html)
    final = replace(
        summary,
        report_html=str(html_path),
        report_json=str(json_path),
        seconds=round(time.perf_counter() - started, 3),
    )
    body = json.dumps(final.to_dict(), indent=2).encode()
    write_atomic(json_path, body)
    write_atomic(folder / LATEST_HTML, html)
    write_atomic(folder / LATEST_JSON, body)
    prune(folder, keep)
    return final


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` timestamped reports of each kind."""
    for suffix in (".json", ".html"):
        runs = sorted(folder.glob(f"{PREFIX}*{suffix}"))  # the UTC stamp sorts by time
        for old in runs[: max(0, len(runs) - keep)]:
            with contextlib.suppress(FileNotFoundError):  # a concurrent run pruned it
                old.unlink()


def read_latest(cfg: DictConfig) -> dict[str, Any] | None:
    """The newest drift summary, or None before the first run."""
    return read_summary(drift_dir(cfg))


def read_summary(folder: Path) -> dict[str, Any] | None:
    """The newest drift summary in ``folder``, or None before the first run."""
    path = folder / LATEST_JSON
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data
