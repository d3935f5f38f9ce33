"""Tasks by name. Adding a task is adding a package here and a ``conf/task/<name>.yaml``."""

from __future__ import annotations

import importlib

from shipyard.errors import ConfigError
from shipyard.tasks.base import DataKind, OutputKind, Split, Task, TrainingHalf

# name -> "module:Class" of the torch-free half; imported on first use.
REGISTRY: dict[str, str] = {
    "image": "shipyard.tasks.image:ImageTask",
    "summarize": "shipyard.tasks.summarize:SummarizeTask",
    "tabular": "shipyard.tasks.tabular:TabularTask",
    "text": "shipyard.tasks.text:TextTask",
}


def get_task(name: str) -> Task:
    """The task registered under ``name``; a one-line :class:`ConfigError` otherwise."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}: choose one of {', '.join(sorted(REGISTRY))} (task=NAME)"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    task: Task = cls()
    return task


__all__ = ["REGISTRY", "DataKind", "OutputKind", "Split", "Task", "TrainingHalf", "get_task"]
