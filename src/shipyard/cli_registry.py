"""The registry commands: ``register``, ``models list|history``, ``promote``, ``rollback``.

Kept beside ``cli.py`` (which imports this module at its end to add the commands) so the
main CLI module stays readable. MLflow is imported inside the commands, like everywhere in
the CLI, so ``shipyard --help`` stays instant.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from shipyard.cli import JsonFlag, Overrides, _compose, _emit, _fmt, _kv_table, _working, app, out

models_app = typer.Typer(
    help="Registered models: their versions and the champion's history.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

NameArg = Annotated[str, typer.Argument(help="Registered model name (`shipyard models list`).")]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why: recorded on the version and in the history.")
]


def _split(words: list[str | None], overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """Positional words that are really overrides (``key=value``) move to the overrides, so
    ``shipyard models list tracking.uri=...`` is not read as a model named that."""
    positional = [w for w in words if w is not None and "=" not in w]
    moved = [w for w in words if w is not None and "=" in w]
    return positional, [*moved, *(overrides or [])]


@app.command()
def register(
    overrides: Overrides = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Registered model name; default registry.model_name, else the data's name."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a run's model package as a new model version (the same package twice: reused).

    The run is `run=RUN_ID`, else the newest run of the task that has a package. The package
    is downloaded and verified first: a missing or altered one changes nothing.
    Examples: `shipyard register task=tabular` · `shipyard register run=RUN_ID --name wine`
    """
    from shipyard.track.registry import register as register_run

    cfg = _compose(overrides)
    with _working(as_json):
        info = register_run(cfg, name=name)
    _emit(info.summary(), as_json, _print_version)


def _print_version(result: dict[str, Any]) -> None:
    state = "already registered (reused)" if result["reused"] else "registered"
    rows = {
        "model": f"{result['name']} v{result['version']} ({state})",
        "aliases": ", ".join(result["aliases"]) or "-",
        "run": result["run_id"],
        "snapshot": result["snapshot_id"],
        "metric": _metric(result),
        "parity": _parity(result),
        "source": result["source"],
    }
    out.print(_kv_table("Model version", rows))
    if not result["aliases"]:
        out.print(
            f"Promote it: [bold]shipyard promote {result['name']} {result['version']}[/]",
            highlight=False,
        )


def _metric(row: dict[str, Any]) -> str:
    value = row.get("metric_value")
    return f"{row['metric']} {value:.4f}" if value is not None and row.get("metric") else "-"


def _parity(row: dict[str, Any]) -> str:
    diff = row.get("parity_max_abs_diff")
    if diff is None:
        return "-"
    return f"{diff:.1e} {'ok' if row.get('parity_passed') else 'FAILED'}"


@models_app.command("list")
def models_list(
    name: Annotated[
        str | None, typer.Argument(help="Only this model's versions.", show_default=False)
    ] = None,
    overrides: Overrides = None,
    as_json: JsonFlag = False,
) -> None:
    """List registered model versions, newest first; the champion is marked.

    Examples: `shipyard models list` · `shipyard models list wine --json`
    """
    from shipyard.track.registry import list_versions

    words, overrides = _split([name], overrides)
    cfg = _compose(overrides)
    rows = [v.summary() for v in list_versions(cfg, words[0] if words else None)]
    if as_json:
        _emit({"versions": rows}, True, lambda r: None)
        return
    if not rows:
        out.print("No registered models yet: `shipyard register task=image` registers one.")
        return
    table = Table(title="Registered models", title_justify="left")
    for column in ("name", "version", "aliases", "run", "snapshot", "metric", "parity", "created"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for row in rows:
        aliases = ", ".join(f"[bold green]{a}[/]" if a == "champion" else a for a in row["aliases"])
        table.add_row(
            row["name"],
            str(row["version"]),
            aliases or "-",
            str(row["run_id"]),
            str(row["snapshot_id"] or "-"),
            _metric(row),
            _parity(row),
            row["created_at"],
        )
    out.print(table)


@models_app.command("history")
def models_history(name: NameArg, overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Show the champion's history: every promotion and rollback, who, when and why.

    Example: `shipyard models history wine`
    """
    from shipyard.track.registry import get_history

    cfg = _compose(overrides)
    events = get_history(cfg, name)
    if as_json:
        _emit({"name": name, "events": events}, True, lambda r: None)
        return
    if not events:
        out.print(f"{name} has no promotions yet: `shipyard promote {name} VERSION`.")
        return
    table = Table(title=f"History of {name}", title_justify="left")
    for column in ("at", "action", "version", "previous", "by", "forced", "reason"):
        table.add_column(column)
    for item in events:
        previous = item.get("previous")
        table.add_row(
            str(item.get("at")),
            str(item.get("action")),
            f"v{item['version']}",
            f"v{previous}" if previous is not None else "-",
            str(item.get("by")),
            "[bold red]yes[/]" if item.get("forced") else "no",
            str(item.get("reason") or ""),
        )
    out.print(table)


@app.command()
def promote(
    name: NameArg,
    version: Annotated[str, typer.Argument(help="The version number (or an alias) to promote.")],
    overrides: Overrides = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote although overridable checks fail (needs --reason)."),
    ] = False,
    reason: ReasonOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a version the champion (the one `serve` loads) if it passes the gate.

    The gate checks integrity (never overridable), parity, the latency budget, compatibility
    with the champion and the primary test metric against the champion's on the candidate's
    test split. Examples: `shipyard promote wine 3` ·
    `shipyard promote wine 4 --force --reason "hotfix: new labels agreed with ops"`
    """
    from shipyard.track.gate import GateRefused
    from shipyard.track.registry import config_for_version
    from shipyard.track.registry import promote as promote_version

    cfg = config_for_version(overrides or [], name, version)
    try:
        with _working(as_json):
            result = promote_version(cfg, name, version, force=force, reason=reason)
    except GateRefused as refused:
        checks = [c.summary() for c in refused.checks]
        _emit(
            {"name": name, "version": version, "refused": True, "checks": checks},
            as_json,
            lambda r: print_gate_checks(r["checks"]),
        )
        raise
    _emit(result.summary(), as_json, _print_promotion)


def print_gate_checks(checks: list[dict[str, Any]]) -> None:
    table = Table(title="Promotion gate", title_justify="left")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        if check["passed"]:
            verdict = "[green]pass[/]"
        else:
            verdict = "[bold red]FAIL[/]" + ("" if check["overridable"] else " (no --force)")
        table.add_row(check["name"], verdict, check["detail"])
    out.print(table)


def _print_promotion(result: dict[str, Any]) -> None:
    if result["checks"]:
        print_gate_checks(result["checks"])
    name, version, previous = result["name"], result["version"], result["previous"]
    if result["reused"]:
        out.print(f"{name} v{version} is already champion: nothing changed.", highlight=False)
        return
    was = f" (was v{previous})" if previous is not None else ""
    forced = " [bold red]forced[/]" if result["forced"] else ""
    verb = "rolled back to" if result["action"] == "rollback" else "champion is now"
    out.print(
        f"{name}: {verb} [bold]v{version}[/]{was}{forced}, by {result['by']} at {result['at']}"
        + (f"; reason: {_fmt(result['reason'])}" if result["reason"] else ""),
        highlight=False,
    )
    if result.get("skipped"):
        out.print(
            f"skipped (no longer registered): {', '.join(f'v{v}' for v in result['skipped'])}"
        )


@app.command()
def rollback(
    name: NameArg,
    overrides: Overrides = None,
    reason: ReasonOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Move `champion` back to the version before the current one (again: one further back).

    Example: `shipyard rollback wine --reason "p95 latency regression in production"`
    """
    from shipyard.track.registry import rollback as rollback_model

    cfg = _compose(overrides)
    with _working(as_json):
        result = rollback_model(cfg, name, reason=reason)
    _emit(result.summary(), as_json, _print_promotion)


@app.command()
def report(
    ref: Annotated[
        str,
        typer.Argument(help="NAME@ALIAS (digits@champion), NAME@VERSION or NAME/VERSION."),
    ],
    overrides: Overrides = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--out", help="Where to write the HTML (default: paths.reports/NAME-vN.html)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a registered version's HTML report: metrics, confusion matrix, parity, latency
    (fp32 vs int8), the lineage chain snapshot -> run -> package -> version, and the
    champion history.

    The package is downloaded and verified against its checksums first. Examples:
    `shipyard report digits@champion` · `shipyard report wine@3 --out wine-v3.html`
    """
    from pathlib import Path

    from shipyard.export.report import write_report
    from shipyard.track.registry import fetch_package, get_history

    cfg = _compose(overrides)
    with _working(as_json):
        package, info = fetch_package(cfg, ref)
        registry = {
            "name": info.name,
            "version": info.version,
            "aliases": info.aliases,
            "history": get_history(cfg, info.name),
        }
        default = Path(str(cfg.paths.reports)) / f"{info.name}-v{info.version}.html"
        path = write_report(
            package.manifest, package.path, Path(output) if output else default, registry
        )
    _emit(
        {"name": info.name, "version": info.version, "report": str(path.resolve())},
        as_json,
        lambda r: out.print(
            f"Report for {r['name']} v{r['version']}: [bold]{r['report']}[/]", highlight=False
        ),
    )
