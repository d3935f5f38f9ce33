"""Write the CLI reference (``reference/cli.md``) from the Typer app at docs build time.

Run by the ``gen-files`` plugin of ``mkdocs.yml``: it walks the Click command that Typer
builds from ``shipyard.cli:app``, so every command, argument and option in the page is
the one the installed ``shipyard`` accepts. Run directly (``python scripts/gen_cli_docs.py``)
it prints the page instead.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from typing import Any

import typer.main

from shipyard.cli import app

PAGE = "reference/cli.md"
INTRO = """# CLI reference

Generated from the `shipyard` command itself (the Typer app `shipyard.cli:app`) each time
the site is built, so it lists exactly what the installed command accepts. The
[command guide](../cli.md) explains each command with examples, its `--json` output and
its exit codes; `shipyard COMMAND --help` prints the same options in a terminal.
"""


def cell(text: str) -> str:
    """One Markdown table cell: no newlines, pipes or raw angle brackets."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def default_of(param: Any) -> str:
    """The default as code, or empty when there is none worth showing."""
    value = param.default
    if callable(value) or value is None or value == () or value == []:
        return ""
    if not isinstance(value, str | int | float | bool | list | tuple):
        return ""  # a sentinel (click's UNSET) or an object with no useful text
    if getattr(param, "is_flag", False) and value is False:
        return ""
    if isinstance(value, list | tuple):
        value = ", ".join(str(item) for item in value)
    return f"`{value}`"


def metavar_of(param: Any, ctx: Any) -> str:
    """What an option's value looks like: its metavar, else its type (``int``, ``str``).

    Typer 0.29 ships its own Click whose parameters name their type with ``bare_type()``;
    older Typer and plain Click have ``make_metavar(ctx)``. Anything else: no metavar.
    """
    if getattr(param, "metavar", None):
        return str(param.metavar)
    for getter, args in (("bare_type", ()), ("make_metavar", (ctx,))):
        method = getattr(param, getter, None)
        if callable(method):
            try:
                return str(method(*args))
            except Exception:  # an internal API that changed shape: leave the cell empty
                continue
    return ""


def help_of(command: Any) -> str:
    text = inspect.cleandoc(command.help or command.short_help or "")
    return text.split("\f", 1)[0].strip()


def context(command: Any, name: str, parent: Any = None) -> Any:
    """A Click context of the command's own class (Typer ships its own copy of Click)."""
    return command.context_class(command, info_name=name, parent=parent)


def subcommands(command: Any, ctx: Any) -> list[tuple[str, Any]]:
    if not hasattr(command, "list_commands"):
        return []
    found = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def walk(command: Any, ctx: Any) -> Iterator[tuple[str, Any, Any]]:
    """(command path, command, context) of the command and every sub-command, depth first."""
    yield ctx.command_path, command, ctx
    for name, sub in subcommands(command, ctx):
        yield from walk(sub, context(sub, name, ctx))


def section(path: str, command: Any, ctx: Any, depth: int) -> list[str]:
    lines = [f"{'#' * min(depth + 1, 6)} `{path}`", ""]
    text = help_of(command)
    if text:
        lines += [text, ""]
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines += ["```text", f"Usage: {usage}", "```", ""]
    rows = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            name = f"`{param.metavar or param.name.upper()}`"
            kind = "argument"
        else:
            names = [*param.opts, *param.secondary_opts]
            name = ", ".join(f"`{opt}`" for opt in names)
            kind = "flag" if getattr(param, "is_flag", False) else "option"
            metavar = metavar_of(param, ctx) if kind == "option" else ""
            if metavar:
                kind = f"option `{metavar}`"
        help_text = getattr(param, "help", None) or ""
        rows.append(
            f"| {cell(name)} | {cell(kind)} | {cell(default_of(param))} | {cell(help_text)} |"
        )
    if rows:
        lines += ["| name | kind | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    subs = [name for name, _ in subcommands(command, ctx)]
    if subs:
        lines += ["Commands: " + ", ".join(f"`{path} {name}`" for name in subs), ""]
    return lines


def render(root: Any = None) -> str:
    command = root if root is not None else typer.main.get_command(app)
    ctx = context(command, "shipyard")
    lines = [INTRO]
    for path, sub, sub_ctx in walk(command, ctx):
        lines += section(path, sub, sub_ctx, depth=path.count(" ") + 1)
    return "\n".join(lines).rstrip() + "\n"


def write_for_mkdocs() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open(PAGE, "w") as handle:
        handle.write(render())
    mkdocs_gen_files.set_edit_path(PAGE, "scripts/gen_cli_docs.py")


if __name__ == "__main__":  # by hand: print the page
    sys.stdout.write(render())
else:  # run by mkdocs-gen-files (runpy.run_path, which names the module "<run_path>")
    write_for_mkdocs()
