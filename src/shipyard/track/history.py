"""The champion's history: promotions and rollbacks, kept on the registered model.

The history is a JSON list of events in one registered-model tag, so it lives where the
alias lives (the registry, local or on a server) and needs no side file. Each event is
``{action, version, previous, at, by, reason, forced}``.

Rollback replays it as a stack: a promotion pushes the new champion, a rollback pops back
to the version it restored. "The champion before the current one" is then the entry
below the current one, and a second rollback goes one further back.
"""

from __future__ import annotations

import json
from typing import Any

TAG_HISTORY = "shipyard.history"
# MLflow validates registered-model tag values up to 100,000 characters, but its SQL
# schema declares the column VARCHAR(5000): Postgres and MySQL would refuse more. The
# oldest events are dropped to stay under it.
MAX_CHARS = 5000
# A reason is kept whole on the version's tags; the history keeps its start.
MAX_REASON = 200


def event(
    action: str,
    version: int,
    previous: int | None,
    at: str,
    by: str,
    reason: str | None,
    forced: bool,
) -> dict[str, Any]:
    if reason is not None and len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 1] + "…"
    return {
        "action": action,
        "version": version,
        "previous": previous,
        "at": at,
        "by": by,
        "reason": reason,
        "forced": forced,
    }


def parse(value: str | None) -> list[dict[str, Any]]:
    """The events in a tag value; an absent or unreadable tag is an empty history."""
    if not value:
        return []
    try:
        events = json.loads(value)
    except json.JSONDecodeError:
        return []
    if not isinstance(events, list):
        return []
    return [e for e in events if isinstance(e, dict) and isinstance(e.get("version"), int)]


def dump(events: list[dict[str, Any]]) -> str:
    """The tag value for ``events``, dropping the oldest until it fits ``MAX_CHARS``."""
    kept = list(events)
    text = json.dumps(kept, separators=(",", ":"))
    while len(text) > MAX_CHARS and len(kept) > 1:
        kept.pop(0)
        text = json.dumps(kept, separators=(",", ":"))
    return text


def champions(events: list[dict[str, Any]]) -> list[int]:
    """Replay the events into the stack of champions, oldest first, current last."""
    stack: list[int] = []
    for item in events:
        version = int(item["version"])
        if item.get("action") == "rollback":
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
        else:
            previous = item.get("previous")
            if not stack and isinstance(previous, int):
                stack.append(previous)  # its own promotion was trimmed from the history
            stack.append(version)
    return stack


def rollback_targets(events: list[dict[str, Any]], current: int | None) -> list[int]:
    """Earlier champions to go back to, most recent first (the current one excluded).

    When the alias was moved outside Shipyard, the replay still holds: everything from the
    current version's last appearance on is newer than it and is not a step back.
    """
    stack = champions(events)
    if current is not None and current in stack:
        stack = stack[: len(stack) - 1 - stack[::-1].index(current)]
    return [v for v in reversed(stack) if v != current]
