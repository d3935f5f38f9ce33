"""The ``shipyard serve`` command: a model package behind uvicorn, in one or several workers.

Kept beside ``cli.py`` (which imports this module at its end to add the command). The
command resolves and checks everything it can *before* uvicorn starts — the registry
reference (downloaded and verified once), the package (opened and smoke-tested), the
settings, the port — so every mistake is one line and exit code 2 instead of a worker's
traceback. Workers then get the result through ``SHIPYARD_SERVE_*`` environment variables
(:meth:`ServeSettings.to_env`) and start without asking the registry again.

Precedence of a setting, lowest first: ``conf/config.yaml`` (``serve:``), a
``SHIPYARD_SERVE_*`` variable already in the environment (containers), ``serve.*``
overrides on the command line and the command's own flags.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli import JsonFlag, Overrides, _compose, _working, app, out
from shipyard.cli_registry import _split
from shipyard.errors import UserError

FACTORY = "shipyard.serve.app:create_app_from_env"


@app.command()
def serve(
    model_ref: Annotated[
        str | None,
        typer.Argument(
            help="Registered model to serve: NAME@ALIAS (digits@champion), NAME@VERSION or "
            "NAME/VERSION. Or give --package.",
            show_default=False,
        ),
    ] = None,
    overrides: Overrides = None,
    package: Annotated[
        str | None,
        typer.Option(
            "--package", help="Serve this model package folder instead of a registry model."
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Interface to listen on (default serve.host, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (default serve.port, 8000).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Worker processes (default serve.workers, 1); metrics aggregate over all of them.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve a model over HTTP: JSON and upload predictions, the Open Inference Protocol
    (KServe V2), feedback, Prometheus metrics, hot reload; ONNX Runtime with adaptive batching.

    Examples: `shipyard serve digits@champion` · `shipyard serve wine@3 --port 9000` ·
    `shipyard serve --package .shipyard/packages/RUN_ID` ·
    `shipyard serve digits@champion --workers 2 serve.reload_interval_s=30` ·
    `SHIPYARD_ADMIN_TOKEN=$(openssl rand -hex 16) shipyard serve digits@champion` (enables /admin/reload and
    /admin/rollback). Interactive API docs: http://HOST:PORT/docs.
    """
    from shipyard.config import to_container

    words, overrides = _split([model_ref], overrides)
    overrides = [*_environment_overrides(), *overrides]
    cfg = _compose(overrides)
    with _working(as_json):
        container = to_container(cfg)
        monitor = {f"monitor_{k}": v for k, v in (container.get("monitor") or {}).items()}
        values = _settings_values({**monitor, **container["serve"]}, overrides)
        flags = {"host": host, "port": port, "workers": workers}
        values.update({k: v for k, v in flags.items() if v is not None})
        ref = words[0] if words else None
        if ref and package:
            raise UserError("give a model reference or --package DIR, not both")
        if ref or package:
            values["model"], values["package"] = ref, package
        values["config_overrides"] = [o for o in overrides if not o.startswith("serve.")]
        values["home"] = str(cfg.paths.home)
        settings, summary = _resolve(cfg, values)
    _check_port(settings.host, settings.port)
    multiproc = _metrics_dir(settings.workers)
    for name in [n for n in os.environ if n.startswith("SHIPYARD_SERVE_")]:
        del os.environ[name]  # stale ones must not reach the workers
    os.environ.update(settings.to_env())
    url = f"http://{settings.host}:{settings.port}"
    summary |= {"url": url, "workers": settings.workers, "pid": os.getpid()}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        out.print(
            f"Serving [bold]{summary['name']}[/] v{summary['version']} ({summary['task']}, "
            f"{settings.precision}) at [bold]{url}[/] with {settings.workers} worker"
            f"{'s' if settings.workers > 1 else ''}; API docs at {url}/docs",
            highlight=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    try:
        _run_uvicorn(settings, as_json)
    finally:
        if multiproc:
            shutil.rmtree(multiproc, ignore_errors=True)


def _environment_overrides() -> list[str]:
    """Config overrides a container sets in the environment, before the command line's:
    ``SHIPYARD_SERVE_CONFIG_OVERRIDES`` (a JSON list or words, e.g. the tracking URI of the
    registry to resolve ``NAME@ALIAS`` from) and ``SHIPYARD_SERVE_HOME`` (``paths.home``)."""
    from shipyard.serve.settings import ENV_PREFIX, ServeSettings

    found: list[str] = []
    home = os.environ.get(f"{ENV_PREFIX}HOME")
    if home:
        found.append(f"paths.home={home}")
    raw = os.environ.get(f"{ENV_PREFIX}CONFIG_OVERRIDES")
    if raw and raw.strip():
        found.extend(ServeSettings._overrides(raw))
    return found


def _settings_values(serve_cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The config's ``serve:`` values, with environment variables winning over the ones the
    command line did not set explicitly."""
    from shipyard.serve.settings import ENV_PREFIX, ServeSettings

    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    explicit = {k.removeprefix("serve.") for k in keys if k.startswith("serve.")} | {
        "monitor_" + k.removeprefix("monitor.") for k in keys if k.startswith("monitor.")
    }
    values = {k: v for k, v in serve_cfg.items() if k in ServeSettings.model_fields}
    for key in ServeSettings.model_fields:
        env = os.environ.get(f"{ENV_PREFIX}{key.upper()}")
        if env is not None and key not in explicit:
            values[key] = env
    return {k: v for k, v in values.items() if v is not None}


def _resolve(cfg: Any, values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Settings with the model resolved to a verified local package, opened and smoke-tested
    here so that a bad model is one line now, not a worker's traceback later."""
    from shipyard.export.package import load_package
    from shipyard.serve.reload import load_served, package_name, package_version
    from shipyard.serve.settings import load_settings

    ref, folder = values.get("model"), values.get("package")
    if not ref and not folder:
        raise UserError(
            "nothing to serve: name a registered model (shipyard serve digits@champion) or a "
            "package folder (shipyard serve --package DIR); `shipyard models list` shows models"
        )
    if ref:
        from shipyard.track.versions import fetch_package

        package, info = fetch_package(cfg, str(ref))
        name, version = info.name, str(info.version)
        values |= {"package": str(package.path), "model_name": name, "model_version": version}
    else:
        package = load_package(Path(str(folder)).expanduser().resolve())
        values["package"] = str(package.path)
        claimed = values.pop("model_version", None)
        name = str(values.get("model_name") or package_name(package.manifest))
        version = package_version(package.path, claimed, values.get("package_digest"))
        if not version.startswith("pkg-"):
            values["model_version"] = version
    settings = load_settings(**values)
    _check_prediction_log(settings)
    load_served(package, name, version, settings)  # a worker's checks; the session is dropped
    summary = {
        "name": name,
        "version": version,
        "task": package.manifest.task,
        "precision": settings.precision,
        "package": str(package.path),
        "model": settings.model,
    }
    return settings, summary


def _check_prediction_log(settings: Any) -> None:
    """A malformed URL or a missing database driver is one line now (a database that is
    merely down is fine: rows spool until it is back)."""
    if not settings.prediction_log:
        return
    from shipyard.serve.predlog import PredictionLog, default_url

    url = settings.prediction_log_url or default_url(settings.home_path)
    try:
        PredictionLog(url, settings.spool_path).close()
    except UserError:
        raise
    except Exception as exc:  # SQLAlchemy's ArgumentError for a URL it cannot parse
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"serve.prediction_log_url {url!r} is not a usable database URL "
            f"({type(exc).__name__}: {first}); expected e.g. sqlite:///PATH or "
            "postgresql://USER@HOST/DB"
        ) from None


def _check_port(host: str, port: int) -> None:
    """A port in use is the commonest start-up failure: one line, before any worker starts."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host!r}: {exc.strerror} (--host)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port"
            ) from None


def _metrics_dir(workers: int) -> str | None:
    """Several workers need Prometheus' multiprocess mode: a fresh folder (ours, removed at
    exit) unless ``PROMETHEUS_MULTIPROC_DIR`` names one (created, emptied of stale values)."""
    from shipyard.serve.metrics import MULTIPROC_ENV, clear_multiprocess_dir

    given = os.environ.get(MULTIPROC_ENV)
    if given:  # prometheus_client writes there whatever the worker count: it must exist
        Path(given).mkdir(parents=True, exist_ok=True)
        clear_multiprocess_dir(given)
        return None
    if workers <= 1:
        return None
    folder = tempfile.mkdtemp(prefix="shipyard-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def _run_uvicorn(settings: Any, as_json: bool) -> None:
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["shipyard"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    if as_json:  # stdout holds exactly the one JSON object
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    uvicorn.run(
        FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        server_header=False,
    )
