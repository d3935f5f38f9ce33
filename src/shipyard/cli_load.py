"""The traffic commands: ``simulate`` (drift simulator) and ``loadtest`` (Locust, headless).

Kept beside ``cli.py`` (which imports this module at its end to add the commands). Both
talk to a running ``shipyard serve``; httpx, numpy and Locust load inside the commands so
``shipyard --help`` stays instant. Both check the server and its model *before* sending
anything — unreachable, not ready, or a model that cannot take the snapshot's rows is one
line and exit code 2 — and both exit 1 when requests failed, after printing the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shipyard.cli import JsonFlag, Overrides, _compose, _emit, _fmt, _kv_table, _working, app, out
from shipyard.console import err_console

SCENARIO_HELP = "Traffic shift: clean, noise, brightness, feature-shift or label-shift."
Url = Annotated[
    str, typer.Option("--url", help="The server, e.g. http://127.0.0.1:8000 (`shipyard serve`).")
]
Scenario = Annotated[str, typer.Option("--scenario", help=SCENARIO_HELP)]
Snapshot = Annotated[
    str | None,
    typer.Option(
        "--snapshot",
        help="Snapshot id to draw test rows from; default: the snapshot that `task=` (else the "
        "server's task) resolves to, as `shipyard train` would.",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the row order, shift and feedback.")]
Batch = Annotated[int, typer.Option("--batch", help="Rows (instances) per request.")]
Strength = Annotated[
    float, typer.Option("--strength", help="How strong the scenario's shift is (1.0: default).")
]
DEFAULT_URL = "http://127.0.0.1:8000"


@app.command()
def simulate(
    overrides: Overrides = None,
    url: Url = DEFAULT_URL,
    scenario: Scenario = "clean",
    requests: Annotated[int, typer.Option("--requests", help="Predict requests to send.")] = 200,
    feedback_share: Annotated[
        float,
        typer.Option(
            "--feedback-share", help="Share of predictions that get their true label (0..1)."
        ),
    ] = 1.0,
    batch: Batch = 1,
    seed: Seed = 0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests in flight at once.")
    ] = 4,
    strength: Strength = 1.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 10.0,
    snapshot: Snapshot = None,
    as_json: JsonFlag = False,
) -> None:
    """Send realistic traffic — the served model's test split, shifted by a scenario — to
    `/predict`, and the true labels to `/feedback`, so the monitor has something to see.

    Examples: `shipyard simulate --scenario clean --requests 500` ·
    `shipyard simulate --url http://127.0.0.1:8000 --scenario noise --requests 300` ·
    `shipyard simulate --scenario label-shift --feedback-share 0.5 task=tabular`.
    Exit 1 when any request failed (the table says which), 2 for a server or model that
    does not fit.
    """
    from shipyard.loadtest.simulate import check_bounds
    from shipyard.loadtest.simulate import simulate as run_simulation
    from shipyard.loadtest.traffic import draw_rows, find_snapshot, probe

    check_bounds(requests, batch, concurrency, feedback_share, timeout)
    with _working(as_json):
        model = probe(url)
        found = find_snapshot(model, overrides, snapshot)
        rows = draw_rows(found, scenario, requests * batch, seed=seed, strength=strength)
        progress = _progress()
        with progress:
            bar = progress.add_task(f"{scenario} -> {model.describe()}", total=requests)
            result = run_simulation(
                model,
                rows,
                requests=requests,
                batch=batch,
                feedback_share=feedback_share,
                concurrency=concurrency,
                timeout_s=timeout,
                seed=seed,
                on_request=lambda: progress.advance(bar),
            )
    _emit(result.summary(), as_json, _print_simulation)
    if result.failed:
        raise typer.Exit(1)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    )


def _print_simulation(result: dict[str, Any]) -> None:
    errors = result["errors"] or {}
    feedback_errors = result["feedback_errors"] or {}
    rows: dict[str, Any] = {
        "server": f"{result['url']} ({result['model']})",
        "snapshot": f"{result['snapshot_id']} (test split)",
        "scenario": result["scenario"],
        "sent": result["sent"],
        "ok": result["ok"],
        "errors": _fmt(errors) if errors else "0",
        "predictions": result["predictions"],
        "feedback ok / sent": f"{result['feedback_ok']} / {result['feedback_sent']}"
        + (f" (errors {_fmt(feedback_errors)})" if feedback_errors else ""),
        "mean / p95 latency ms": f"{_round(result['mean_latency_ms'], 1)} / "
        f"{_round(result['p95_latency_ms'], 1)}",
        "requests/s": _round(result["requests_per_s"], 0),
        "seconds": _round(result["duration_s"], 1),
    }
    if "predicted_labels" in result:
        rows["predicted labels"] = _fmt(result["predicted_labels"])
    if "mean_predicted_value" in result:
        rows["mean predicted value"] = _round(result["mean_predicted_value"], 4)
    if "first_error" in result:
        rows["first error"] = result["first_error"]
    out.print(_kv_table("Simulation", rows))


@app.command()
def loadtest(
    overrides: Overrides = None,
    url: Url = DEFAULT_URL,
    users: Annotated[int, typer.Option("--users", help="Concurrent Locust users.")] = 10,
    spawn_rate: Annotated[
        float, typer.Option("--spawn-rate", help="Users started per second.")
    ] = 2.0,
    duration: Annotated[
        int, typer.Option("--duration", help="Seconds of load, ramp included.")
    ] = 30,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            help="Hold this total requests/s (each user paced with constant_throughput); "
            "default: as fast as the server answers.",
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="HTML report path; default <paths.home>/loadtests/loadtest-TIME.html."
        ),
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Prefix of Locust's CSV files; default: the report's path without .html."
        ),
    ] = None,
    max_failure_rate: Annotated[
        float,
        typer.Option(
            "--max-failure-rate", help="Exit 1 when failures/requests is above this (0..1)."
        ),
    ] = 0.0,
    server_pid: Annotated[
        int | None,
        typer.Option(
            "--server-pid",
            help="Sample this process' resident memory (and its children's); default: the "
            "server's /metrics, else the process listening on a loopback URL's port.",
        ),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a URL that is not a loopback address.")
    ] = False,
    scenario: Scenario = "clean",
    batch: Batch = 1,
    seed: Seed = 0,
    snapshot: Snapshot = None,
    as_json: JsonFlag = False,
) -> None:
    """Load-test a server with Locust, headless and bounded: predict, upload, V2 infer and
    feedback with real test rows; an HTML report, a table per endpoint and the server's memory.

    Examples: `shipyard loadtest --users 20 --duration 60` ·
    `shipyard loadtest --users 32 --rate 800 --duration 300 --server-pid 4242` ·
    `shipyard loadtest --url http://10.0.0.5:8000 --allow-remote --html report.html`.
    Exit 1 when the failure rate is above --max-failure-rate (default: any failure).
    """
    from shipyard.loadtest.run import check_bounds, run_loadtest

    check_bounds(url, users, spawn_rate, duration, rate, allow_remote)
    cfg = _compose(overrides)
    with _working(as_json):
        progress = _progress()
        with progress:
            bar = progress.add_task(f"Locust, {users} users", total=duration)
            result = run_loadtest(
                url,
                users=users,
                spawn_rate=spawn_rate,
                duration_s=duration,
                out_dir=Path(str(cfg.paths.home)) / "loadtests",
                html=html,
                csv_prefix=csv,
                max_failure_rate=max_failure_rate,
                server_pid=server_pid,
                allow_remote=allow_remote,
                rate=rate,
                snapshot=snapshot,
                overrides=overrides,
                scenario=scenario,
                batch=batch,
                seed=seed,
                on_tick=lambda s: progress.update(bar, completed=min(s, duration)),
            )
    _emit(result.summary(), as_json, print_loadtest)
    if not result.passed:
        raise typer.Exit(1)


def print_loadtest(result: dict[str, Any]) -> None:
    """The per-endpoint table, memory, failures and where the report is."""
    target = f", target {result['target_rate']:g} req/s" if result["target_rate"] else ""
    table = Table(
        title=f"Load test: {result['model']} at {result['url']}, {result['users']} users, "
        f"{result['duration_s']} s{target} (latency in ms)",
        title_justify="left",
    )
    table.add_column("endpoint", no_wrap=True)
    for column in ("requests", "failures", "req/s", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    methods = {row["method"] for row in result["endpoints"]}
    for row in [*result["endpoints"], {**result["total"], "method": "", "name": "total"}]:
        table.add_row(
            row["name"] if len(methods) == 1 else f"{row['method']} {row['name']}".strip(),
            f"{row['requests']:,}",
            f"{row['failures']:,}",
            f"{row['rps']:,.0f}" if row["rps"] >= 100 else f"{row['rps']:.1f}",
            *(_ms(row[key]) for key in ("p50_ms", "p95_ms", "p99_ms")),
            style="bold" if row["name"] == "total" else None,
        )
    out.print(table)
    memory = result.get("memory")
    if memory and memory.get("samples"):
        out.print(
            f"Server RSS, {memory['source']}: start {memory['start_mib']} MiB, end "
            f"{memory['end_mib']} MiB, peak {memory['peak_mib']} MiB; growth "
            f"{memory['growth_pct']:+.2f}% ({memory['growth_after_warmup_pct']:+.2f}% after the "
            f"ramp, {memory['warm_after_s']:g} s)",
            highlight=False,
        )
    else:
        out.print("Server RSS: not measured (give --server-pid)", highlight=False)
    for failure in result["failures"][:5]:
        out.print(
            f"[red]failure[/] {failure['method']} {failure['name']} x{failure['occurrences']}: "
            f"{failure['error']}",
            highlight=False,
        )
    for warning in result["warnings"]:
        err_console.print(f"[yellow]warning:[/] Locust: {warning}", highlight=False)
    verdict = "[green]passed[/]" if result["passed"] else "[red]failed[/]"
    out.print(
        f"Failure rate {result['failure_rate']:.4%} (max {result['max_failure_rate']:.4%}): "
        f"{verdict}. Report: [bold]{result['html']}[/]",
        highlight=False,
    )


def _round(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    """Locust keeps whole milliseconds below 100 ms (coarser above): print what it has."""
    return (
        "-" if value is None else f"{value:,.0f}" if float(value).is_integer() else f"{value:.1f}"
    )
