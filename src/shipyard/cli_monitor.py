"""The monitoring commands: ``shipyard monitor drift`` and ``shipyard monitor accuracy``.

Kept beside ``cli.py`` (which imports this module at its end to add the commands).
Evidently takes seconds to import and pandas is not free either, so both are imported
inside the commands: ``shipyard --help`` stays instant.

Which model: ``--model NAME@ALIAS`` (a registry reference, as for ``shipyard serve``),
``--package DIR``, else what ``serve.model`` / ``serve.package`` name, else
``{registry.model_name}@champion``. The log's rows are selected by the name the server
logs (the registry name; for a package folder ``serve.model_name`` or the data's name)
and, for a registry reference, by its version; ``--name`` / ``--version`` override both
(the server passes them when it runs the check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table

from shipyard.cli import JsonFlag, Overrides, _compose, _emit, _fmt, _kv_table, _working, app, out
from shipyard.errors import UserError

monitor_app = typer.Typer(
    help="Watch a served model: drift against its training data, live accuracy from feedback.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Registered model: NAME@ALIAS, NAME@VERSION or NAME/VERSION (default serve.model, "
        "else registry.model_name@champion).",
        show_default=False,
    ),
]
PackageOption = Annotated[
    str | None,
    typer.Option("--package", help="A model package folder instead of a registry model."),
]
NameOption = Annotated[
    str | None,
    typer.Option(
        "--name", help="The model name in the prediction log (default: as the server logs it)."
    ),
]
VersionOption = Annotated[
    str | None,
    typer.Option(
        "--version",
        help="Only this version's predictions (default: the reference's version; every "
        "version for --package).",
    ),
]


@dataclass(frozen=True)
class Target:
    """The model to monitor and where its predictions are."""

    package: Any  # ModelPackage
    name: str
    version: str | None
    log_url: str
    precision: str


def resolve_target(
    cfg: Any,
    overrides: list[str],
    *,
    model: str | None,
    package: str | None,
    name: str | None,
    version: str | None,
) -> Target:
    """Resolve the model as ``shipyard serve`` does (config, then ``SHIPYARD_SERVE_*``
    variables, then ``serve.*`` overrides, then the flags), and the log URL with it."""
    from pathlib import Path

    from shipyard.cli_serve import _settings_values
    from shipyard.config import to_container
    from shipyard.export.package import load_package
    from shipyard.serve.predlog import default_url

    if model and package:
        raise UserError("give --model NAME@ALIAS or --package DIR, not both")
    values = _settings_values(to_container(cfg)["serve"], overrides)
    if not model and not package:
        model, package = values.get("model"), values.get("package")
        if model and package:
            package = None  # serve.model wins, as in `shipyard serve`
    if not model and not package:
        registered = cfg.registry.get("model_name")
        if not registered:
            raise UserError(
                "which model? give --model NAME@champion or --package DIR (or set "
                "serve.model or registry.model_name); `shipyard models list` shows models"
            )
        model = f"{registered}@champion"
    if model:
        from shipyard.track.versions import fetch_package

        found, info = fetch_package(cfg, str(model))
        log_name, log_version = info.name, str(info.version)
    else:
        from shipyard.serve.reload import package_name

        found = load_package(Path(str(package)).expanduser().resolve())
        log_name = str(values.get("model_name") or package_name(found.manifest))
        log_version = None
    home = Path(str(cfg.paths.home))
    return Target(
        package=found,
        name=name or log_name,
        version=version if version is not None else log_version,
        log_url=str(values.get("prediction_log_url") or default_url(home)),
        precision=str(values.get("precision") or "fp32"),
    )


def _split_overrides(overrides: list[str] | None) -> list[str]:
    words = list(overrides or [])
    stray = [w for w in words if "=" not in w]
    if stray:
        raise UserError(
            f"unexpected argument {stray[0]!r}: name the model with --model NAME@ALIAS or "
            "--package DIR; other arguments are overrides key=value"
        )
    return words


@monitor_app.command("drift")
def drift(
    overrides: Overrides = None,
    window: Annotated[
        int | None,
        typer.Option("--window", help="Compare the newest N predictions (default monitor.window)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Compare every prediction since TIME: ISO (UTC if no zone) or 30m, 1h, 2d.",
        ),
    ] = None,
    model: ModelOption = None,
    package: PackageOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare recent predictions with the training snapshot: monitor features, outputs and
    embeddings, with Evidently. Writes an HTML report and a JSON summary to
    `paths.home/monitoring/drift/` (latest.html, latest.json and a timestamped copy of each).

    Examples: `shipyard monitor drift` · `shipyard monitor drift --model digits@champion
    --window 500` · `shipyard monitor drift --since 1h --json` · `shipyard monitor drift
    --package DIR monitor.min_rows=50`
    """
    from shipyard.monitor.logreader import parse_since

    words = _split_overrides(overrides)
    if window is not None and since is not None:
        raise UserError("give --window N or --since TIME, not both")
    if window is not None and window < 1:
        raise UserError(f"--window must be at least 1, got {window}")
    start = parse_since(since) if since is not None else None
    cfg = _compose(words)
    with _working(as_json):
        from shipyard.monitor.drift import run_drift

        target = resolve_target(
            cfg, words, model=model, package=package, name=name, version=version
        )
        summary = run_drift(
            cfg,
            package=target.package,
            window=window,
            since=start,
            model_name=target.name,
            model_version=target.version,
            log_url=target.log_url,
            precision=target.precision,
        )
    _emit(summary.to_dict(), as_json, _print_drift)


def _short(moment: str | None) -> str:
    """An ISO time to the second, for a table title (the JSON keeps the full value)."""
    return "-" if not moment else moment.replace("T", " ")[:19] + " UTC"


def _print_drift(result: dict[str, Any]) -> None:
    model = result["model"]
    window = result["window"]
    title = (
        f"Drift of {model['name']}"
        + (f" v{model['version']}" if model["version"] else "")
        + f": {window['rows']} predictions, {_short(window['start'])} .. {_short(window['end'])}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("column", "kind", "method", "score", "threshold", "drifted"):
        table.add_column(column, justify="right" if column in ("score", "threshold") else "left")
    for row in result["features"]:
        table.add_row(
            row["name"],
            row["kind"],
            row["method"],
            "-" if row["score"] is None else f"{row['score']:.4g}",
            "-" if row["threshold"] is None else f"{row['threshold']:g}",
            "[bold red]yes[/]" if row["drifted"] else "no",
        )
    out.print(table)
    drifted = sum(r["drifted"] for r in result["features"])
    verdict = "[bold red]DRIFT[/]" if result["dataset_drift"] else "[green]no drift[/]"
    out.print(
        f"Dataset: {verdict} — {drifted} of {len(result['features'])} columns drifted "
        f"(share {result['drift_share']:.2f}, flag at >= {result['drift_share_threshold']:.2f})",
        highlight=False,
    )
    for note in result.get("skipped", []):
        out.print(f"[dim]not compared: {note}[/]", highlight=False)
    out.print(f"Report: [bold]{result['report_html']}[/]", highlight=False, soft_wrap=True)


@monitor_app.command("accuracy")
def accuracy(
    overrides: Overrides = None,
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            help="The newest N predictions with feedback (default monitor.accuracy_window).",
        ),
    ] = None,
    model: ModelOption = None,
    package: PackageOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Live accuracy (or MAE for numbers) from `POST /feedback` labels, against the
    package's test metric; `alert` when it is worse by more than the margin.

    Examples: `shipyard monitor accuracy --model digits@champion` ·
    `shipyard monitor accuracy --window 200 --json` ·
    `shipyard monitor accuracy monitor.accuracy_margin=0.02`
    """
    words = _split_overrides(overrides)
    if window is not None and window < 1:
        raise UserError(f"--window must be at least 1, got {window}")
    cfg = _compose(words)
    with _working(as_json):
        target = resolve_target(
            cfg, words, model=model, package=package, name=name, version=version
        )
        result = live_accuracy(cfg, target, window)
    _emit(result, as_json, _print_accuracy)


def live_accuracy(cfg: Any, target: Target, window: int | None) -> dict[str, Any]:
    """The live metric for a resolved target, with the config's window and margins."""
    import sqlalchemy as sa

    from shipyard.monitor.accuracy import live_margin, live_metric, package_metric

    metric, test_value = package_metric(target.package.manifest, target.precision)
    mon = cfg.monitor
    margin = live_margin(
        metric,
        test_value,
        float(mon.accuracy_margin),
        None if mon.mae_margin is None else float(mon.mae_margin),
    )
    try:
        result = live_metric(
            target.log_url,
            target.name,
            target.version,
            window=int(window or mon.accuracy_window),
            test_metric=test_value,
            metric=metric,
            margin=margin,
            min_samples=int(mon.accuracy_min_samples),
        )
    except sa.exc.SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read the prediction log at {target.log_url}: {first}") from exc
    return {"model": {"name": target.name, "version": target.version}, **result.to_dict()}


def _print_accuracy(result: dict[str, Any]) -> None:
    model = result["model"]
    who = model["name"] + (f" v{model['version']}" if model["version"] else "")
    rows = {
        "metric": result["metric"],
        "live": "-" if result["value"] is None else result["value"],
        "predictions with feedback": f"{result['samples']} (window {result['window']})",
        "test": "-" if result["test_value"] is None else result["test_value"],
        "drop (positive = worse)": "-" if result["drop"] is None else result["drop"],
        "margin": result["margin"],
        "alert": "[bold red]yes[/]" if result["alert"] else "no",
    }
    out.print(_kv_table(f"Live {result['metric']} of {who}", {k: _fmt(v) for k, v in rows.items()}))
    if result["samples"] == 0:
        out.print(
            "No feedback yet: send true labels with POST /feedback "
            '{"prediction_id": ..., "label": ...}.',
            highlight=False,
        )
