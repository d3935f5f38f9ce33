"""The ``shipyard`` command: arguments in, one function call, a table (or JSON) out.

Imports of torch, Lightning and MLflow happen inside the commands so that
``shipyard --help`` is instant. A :class:`~shipyard.errors.UserError` becomes one line on
stderr and exit code 2; results go to stdout.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shipyard.console import err_console
from shipyard.errors import UserError

OVERRIDES_HELP = (
    "Config overrides as key=value: task=tabular, model=resnet18, data=csv data.path=wine.csv "
    "data.target=quality, trainer.max_epochs=5, model.lr=1e-3. `shipyard config show` prints every key."
)
Overrides = Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]

app = typer.Typer(
    name="shipyard",
    help=(
        "Shipyard: a dataset to a trained, versioned model, served and watched.\n\n"
        "Quick start: `shipyard pipeline task=image` prepares the bundled digits, trains a CNN "
        "and scores it. State lives in $SHIPYARD_HOME (default ./.shipyard)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)
data_app = typer.Typer(help="Versioned data snapshots: prepare, list, show.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the composed config.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
out = Console()


def main() -> None:
    """Entry point: user mistakes exit 2 with one line, no traceback.

    Typer's standalone mode already handles usage errors (unknown command or option:
    exit 2), ``--help`` and Ctrl-C; Shipyard's own :class:`UserError` is handled here.
    """
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


@contextmanager
def _working(as_json: bool) -> Iterator[None]:
    """While a command works: our warnings as one line each, and with ``--json`` anything
    a library prints (W&B's footer, say) goes to stderr so stdout stays one JSON object."""
    with _warnings_to_console():
        if not as_json:
            yield
            return
        with redirect_stdout(sys.stderr):
            yield


@contextmanager
def _warnings_to_console() -> Iterator[None]:
    """Show our warnings as one yellow line each, not Python's two-line format."""

    def show(
        message: Warning | str, category: type[Warning], filename: str, *_: Any, **__: Any
    ) -> None:
        if "shipyard" in filename:  # libraries' deprecation chatter is not the user's business
            err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    previous = warnings.showwarning
    warnings.showwarning = show  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.showwarning = previous


def _compose(overrides: list[str] | None) -> Any:
    from shipyard.config import compose

    return compose(overrides or [])


def _emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        render(result)


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


# -- data -------------------------------------------------------------------------------


@data_app.command("prepare")
def data_prepare(overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Read a source into an immutable, content-addressed snapshot with fixed splits.

    Examples: `shipyard data prepare task=image` (bundled digits) ·
    `shipyard data prepare task=tabular data=csv data.path=wine.csv data.target=quality` ·
    `shipyard data prepare task=image data=folder data.path=./rice_images`
    """
    from shipyard.data.prepare import prepare

    cfg = _compose(overrides)
    with _working(as_json):
        result = prepare(cfg)
    _emit(result.summary(), as_json, lambda r: out.print(_kv_table("Snapshot", r)))


@data_app.command("list")
def data_list(overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """List the snapshots in the store (newest first)."""
    from shipyard.data.snapshot import SnapshotStore

    cfg = _compose(overrides)
    manifests = SnapshotStore(str(cfg.paths.snapshots)).list()
    rows = [
        {
            "id": m["id"],
            "created_at": m["created_at"],
            "task": m.get("task"),
            "source": m["source"].get("name"),
            "rows": m["rows"],
            **{f"{s}_rows": m["splits"][s]["rows"] for s in ("train", "val", "test")},
            "skipped": m["skipped"]["count"],
        }
        for m in manifests
    ]
    if as_json:
        typer.echo(json.dumps({"store": str(cfg.paths.snapshots), "snapshots": rows}))
        return
    if not rows:
        out.print(
            f"No snapshots in {cfg.paths.snapshots} yet: run `shipyard data prepare task=image`."
        )
        return
    table = Table(title=f"Snapshots in {cfg.paths.snapshots}", title_justify="left")
    for column in rows[0]:
        table.add_column(
            column, justify="right" if column.endswith(("rows", "skipped")) else "left"
        )
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


@data_app.command("show")
def data_show(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id or a unique prefix of it.")],
    overrides: Overrides = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a snapshot's manifest: source, schema, splits and class balance, skipped files."""
    from shipyard.data.snapshot import SnapshotStore

    cfg = _compose(overrides)
    manifest = SnapshotStore(str(cfg.paths.snapshots)).get(snapshot_id).manifest
    if as_json:
        typer.echo(json.dumps(manifest))
        return
    out.print(
        _kv_table(
            f"Snapshot {manifest['id']}",
            {
                "hash": manifest["hash"],
                "created": manifest["created_at"],
                "task": manifest.get("task"),
                "source": manifest["source"],
                "features": (
                    manifest["schema"]["features"].get("columns")
                    and [c["name"] for c in manifest["schema"]["features"]["columns"]]
                )
                or manifest["schema"]["features"],
                "target": f"{manifest['schema']['target']['name']} ({manifest['schema']['target']['kind']})",
                "rows": manifest["rows"],
                "skipped files": manifest["skipped"]["count"],
                "drift reference rows": manifest["reference"]["rows"],
            },
        )
    )
    splits = Table(title="Splits", title_justify="left")
    splits.add_column("split")
    splits.add_column("rows", justify="right")
    splits.add_column("class balance / target")
    for name, info in manifest["splits"].items():
        detail = (
            info.get("class_balance") or info.get("target_stats") or info.get("target_words") or {}
        )
        splits.add_row(name, str(info["rows"]), _fmt(detail))
    out.print(splits)


# -- train / evaluate / pipeline ----------------------------------------------------------


def _metrics_table(
    title: str, metrics: dict[str, float], baseline: dict[str, float] | None = None
) -> Table:
    """Metrics, one per row; with ``baseline`` (the same keys: the task's yardstick on the
    same split) a column beside them, so the two are read together."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if baseline:
        table.add_column("baseline", justify="right")
    for key, value in sorted(metrics.items()):
        row = [key, f"{value:.4f}"]
        if baseline:
            row.append(f"{baseline[key]:.4f}" if key in baseline else "")
        table.add_row(*row)
    return table


@app.command()
def train(overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Train a model on a snapshot and track the run in MLflow.

    Examples: `shipyard train task=image` · `shipyard train task=tabular trainer.max_epochs=5 model.lr=1e-3` ·
    `shipyard train task=image model=resnet18 model.checkpoint=weights.safetensors` ·
    `shipyard train snapshot=SNAPSHOT_ID resume=true`
    """
    from shipyard.train.run import train as run_training

    cfg = _compose(overrides)
    with _working(as_json):
        result = run_training(cfg)
    _emit(result.summary(), as_json, lambda r: _print_train(r))


def _print_train(result: dict[str, Any]) -> None:
    info = {k: v for k, v in result.items() if k != "metrics"}
    out.print(_kv_table("Training run", info))
    out.print(_metrics_table("Metrics (best checkpoint)", result["metrics"]))
    _print_browse_hint(result["tracking_uri"])


@app.command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="The MLflow run id printed by `shipyard train`.")],
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Which split to score: test, val or train.")] = "test",
    as_json: JsonFlag = False,
) -> None:
    """Score a tracked run's best checkpoint on its snapshot and record the metrics on the run."""
    from shipyard.train.evaluate import evaluate_run

    cfg = _compose(overrides)
    with _working(as_json):
        result = evaluate_run(cfg, run_id, split)
    _emit(
        result.summary(),
        as_json,
        lambda r: out.print(_metrics_table(f"Run {run_id} on {split}", r["metrics"])),
    )


@app.command()
def export(overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Export a tracked run as a model package: ONNX (fp32, and int8 with `quantize=int8`),
    parity with PyTorch over the whole test split, test metrics and latency per graph,
    lineage and an HTML report, in `paths.packages/RUN_ID` and on the run as `package/`.

    The run is `run=RUN_ID`, or else the newest finished run of `task`.
    Examples: `shipyard export` · `shipyard export run=RUN_ID` ·
    `shipyard export task=tabular quantize=null` · `shipyard export export.latency.threads=2 --json`
    """
    from shipyard.export.build import export_run

    cfg = _compose(overrides)
    with _working(as_json):
        result = export_run(cfg)
    _emit(result.summary(), as_json, _print_export)


def _print_export(result: dict[str, Any]) -> None:
    # The scored graphs: the model (fp32, int8), or a seq2seq package's encoder, whose
    # figures are whole summaries; its decoders are listed below the table.
    graphs = [g for g in result["graphs"] if g.get("role", "model") in ("model", "encoder")]
    helpers = [g["file"] for g in result["graphs"] if g not in graphs]
    metric = result["primary_metric"]
    threads = graphs[0]["threads"]
    table = Table(
        title=f"{' vs '.join(g['precision'] for g in graphs)} "
        f"(ONNX Runtime, {threads} thread{'s' if threads != 1 else ''})",
        title_justify="left",
    )
    table.add_column("")
    for graph in graphs:
        method = result.get("quantization") if graph["precision"] == "int8" else None
        table.add_column(graph["precision"] + (f" ({method})" if method else ""), justify="right")
    table.add_row("file", *(g["file"] for g in graphs))
    table.add_row("size (KB)", *(f"{g['bytes'] / 1024:.1f}" for g in graphs))
    pytorch = result["metrics"].get(f"test_{metric}")
    label = f"test {metric}" + (f" (PyTorch {pytorch:.4f})" if pytorch is not None else "")
    table.add_row(label, *(_fmt(g["metrics"].get(metric, float("nan"))) for g in graphs))
    for size in graphs[0]["latency"]:
        table.add_row(
            f"batch {size} p50 / p95 ms",
            *(
                f"{g['latency'][size]['p50_ms']:.3f} / {g['latency'][size]['p95_ms']:.3f}"
                if size in g["latency"]
                else "-"
                for g in graphs
            ),
        )
    out.print(table)
    if helpers:
        out.print(
            f"Decoding graphs: {', '.join(helpers)}; the figures above are whole summaries "
            "(encoder and decoding loop)",
            highlight=False,
        )
    parity = result["parity"]
    verdict = "[green]passed[/]" if parity["passed"] else "[red]failed[/]"
    shared = parity.get("sequences_equal")
    what = (
        f"{shared:.1%} of greedy summaries equal, embeddings max |difference| "
        if shared is not None
        else "max |PyTorch - ONNX| "
    )
    out.print(
        f"Parity: {what}{parity['max_abs_diff']:.2e} over {parity['rows']} test "
        f"rows (tolerance {parity['tolerance']:g}): {verdict}",
        highlight=False,
    )
    out.print(f"Package: [bold]{result['package']}[/]", highlight=False)
    if result.get("report"):
        out.print(f"Report: [bold]{result['report']}[/]", highlight=False)


@app.command()
def pipeline(
    overrides: Overrides = None,
    until: Annotated[
        str,
        typer.Option(
            help="Stop after this stage: data, train, evaluate, export, register or promote."
        ),
    ] = "promote",
    as_json: JsonFlag = False,
) -> None:
    """Run data -> train -> evaluate -> export -> register -> promote, reusing unchanged stages.

    Every stage is cached by content: run it again with nothing changed and each stage says
    `reused`. Examples: `shipyard pipeline task=image` · `shipyard pipeline task=tabular
    trainer.max_epochs=30` · `shipyard pipeline --until export` · `shipyard pipeline
    pipeline.cache=false` (run every stage again).
    """
    from shipyard.pipeline import run_pipeline

    cfg = _compose(overrides)
    with _working(as_json):
        result = run_pipeline(cfg, until)
    _emit(result, as_json, _print_pipeline)
    if "refused" in result:  # the table above shows what ran and why the gate said no
        raise UserError(result["refused"]["message"])


def _print_pipeline(result: dict[str, Any]) -> None:
    table = Table(title="Pipeline", title_justify="left")
    for column in ("stage", "result", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for stage in result["stages"]:
        result_text = stage["result"] + (" [dim](reused)[/]" if stage["reused"] else "")
        table.add_row(stage["stage"], result_text, f"{stage['seconds']:.1f}")
    out.print(table)
    if "metrics" in result:
        out.print(_metrics_table("Test metrics", result["metrics"], result.get("baseline")))
    champion = result.get("champion") or result.get("model")
    if champion:
        role = "champion" if "champion" in result else "registered (not promoted)"
        out.print(
            f"Model [bold]{champion['name']}[/] version [bold]{champion['version']}[/] ({role})",
            highlight=False,
        )
    if "refused" in result:
        from shipyard.cli_registry import print_gate_checks

        print_gate_checks(result["refused"]["checks"])
    if "parity_max_abs_diff" in result:
        out.print(f"Parity (max |PyTorch - ONNX|): {result['parity_max_abs_diff']:.2e}")
    if "parity_sequences_equal" in result:
        share = result["parity_sequences_equal"]
        out.print(f"Parity (ONNX greedy summaries equal to PyTorch's): {share:.1%}")
    if "report" in result:
        out.print(f"Report: [bold]{result['report']}[/]", highlight=False)
    if "tracking_uri" in result:
        _print_browse_hint(result["tracking_uri"])


def _print_browse_hint(uri: str) -> None:
    if uri.startswith("sqlite:"):
        out.print(f"Browse runs: [bold]mlflow ui --backend-store-uri {uri}[/]", highlight=False)


# -- config -------------------------------------------------------------------------------


@config_app.command("show")
def config_show(overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Print the fully resolved config for these overrides."""
    from shipyard.config import to_container, to_yaml

    cfg = _compose(overrides)
    if as_json:
        typer.echo(json.dumps(to_container(cfg)))
    else:
        out.print(to_yaml(cfg), highlight=False, markup=False)


@config_app.command("options")
def config_options(as_json: JsonFlag = False) -> None:
    """List the options of every config group (task, data, model, trainer, ...)."""
    from shipyard.config import GROUPS, available

    options = {group: available(group) for group in GROUPS}
    if as_json:
        typer.echo(json.dumps(options))
        return
    out.print(_kv_table("Config groups", {g: ", ".join(o) for g, o in options.items()}))


@app.command()
def version(as_json: JsonFlag = False) -> None:
    """Print Shipyard's version."""
    from shipyard import __version__

    typer.echo(json.dumps({"version": __version__}) if as_json else __version__)


# The registry commands (register, models, promote, rollback) and `serve` live in their own
# modules.
import shipyard.cli_image  # noqa: E402  (image build, image context)
import shipyard.cli_load  # noqa: E402, F401  (simulate, loadtest)
import shipyard.cli_monitor as _monitor  # noqa: E402, F401  (monitor drift, accuracy)
from shipyard import cli_registry, cli_serve, cli_sweep  # noqa: E402, F401
