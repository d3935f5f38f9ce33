"""Terminal output shared by the commands: one stderr console and progress bars.

Results go to stdout (a table, or one JSON object with ``--json``); progress, warnings
and errors go to stderr so that scripts can parse stdout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console

T = TypeVar("T")

err_console = Console(stderr=True)


def track(items: Iterable[T], *, description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar over ``items`` on stderr (quiet when stderr is not a terminal)."""
    from rich.progress import track as rich_track

    yield from rich_track(
        items,
        description=description,
        total=total if total is not None else _length(items),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    )


def _length(items: Iterable[object]) -> float | None:
    try:
        return float(len(items))  # type: ignore[arg-type]
    except TypeError:
        return None


def quiet_libraries() -> None:
    """Keep Lightning's and MLflow's start-up chatter (tips, device lines) off the terminal."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
