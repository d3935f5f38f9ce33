"""The docs and the set-up promises stay true: every config key and CLI command is documented,
and the README's quick start is the two commands that CI runs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from shipyard.config import GROUPS, available, to_container

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Compositions that together reach every key of every config option.
COMPOSITIONS = [
    ("task=image",),
    ("task=tabular",),
    ("model=timm",),
    ("trainer=fast",),
    ("trainer=ddp",),
    ("experiment=digits_quick",),
    ("data=folder", "data.path=x"),
    ("task=tabular", "data=csv", "data.path=x.csv", "data.target=y"),
    ("task=tabular", "data=parquet", "data.path=x.parquet", "data.target=y"),
    ("data=huggingface", "data.name=x"),
]


def leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted names of the leaves of a nested dict; a list is a leaf (data.image_size)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaf_keys(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def mentions(text: str, name: str) -> bool:
    """``name`` appears as a whole dotted name (data.path does not count inside data.paths);
    a top-level key (seed) only counts as code: `seed` or seed=..."""
    if "." not in name:
        return f"`{name}`" in text or re.search(rf"(?<![\w.]){re.escape(name)}=", text) is not None
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text) is not None


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=" ".join)
def test_every_config_key_is_documented(
    compose: Callable[..., DictConfig], overrides: tuple[str, ...]
) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = sorted(set(leaf_keys(to_container(compose(*overrides)))))
    assert "trainer.max_epochs" in keys  # the walk reaches nested keys
    missing = [key for key in keys if not mentions(text, key)]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_every_config_option_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [
        f"{group}={option}"
        for group in GROUPS
        for option in available(group)
        if not re.search(rf"`{re.escape(option)}`|{re.escape(group)}={re.escape(option)}", text)
    ]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def cli_commands() -> Iterator[tuple[str, Any]]:
    """(``shipyard data prepare``, click command) for every command and sub-command."""
    import typer.main

    from shipyard.cli import app

    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    yield from walk(typer.main.get_command(app), "shipyard")


def test_every_cli_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = dict(cli_commands())
    assert {"shipyard data prepare", "shipyard train", "shipyard config show"} <= set(commands)
    missing_commands = [path for path in commands if path not in text]
    assert not missing_commands, f"docs/cli.md does not mention {missing_commands}"
    missing_options = [
        f"{path} {opt}"
        for path, command in commands.items()
        for param in command.params
        for opt in getattr(param, "opts", [])
        if opt.startswith("--") and opt != "--help" and opt not in text
    ]
    assert not missing_options, f"docs/cli.md does not mention {missing_options}"


def test_readme_quickstart_is_make_run_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Quickstart\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    assert match, "README.md has no '## Quickstart' section"
    blocks = re.findall(r"```[a-z]*\n(.*?)```", match.group(1), flags=re.S)
    commands = [
        line.split("#", 1)[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert commands == ["make run", "make test"]


def test_makefile_has_the_targets_and_ci_runs_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("setup", "run", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"no `{target}:` target"
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line.split("#", 1)[0].strip() for line in ci_run.splitlines()]
    assert "make test" in steps, ".ci/run does not call `make test`"
