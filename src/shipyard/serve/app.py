"""The HTTP service: FastAPI app factory, endpoints, lifespan.

``create_app(settings)`` builds one app; ``create_app_from_env()`` is the factory uvicorn
calls in every worker (``shipyard serve`` exports the settings as ``SHIPYARD_SERVE_*``
variables first). The lifespan loads the model (:mod:`shipyard.serve.reload`), starts the
batcher (:mod:`shipyard.serve.batcher`) and the prediction log
(:mod:`shipyard.serve.predlog`); on shutdown — uvicorn's graceful SIGTERM handling, after
in-flight requests have been answered — it drains the batcher and flushes the log.

The request path is kept short on purpose: the body is read with a size cap, parsed with
orjson, checked into a float32 array with numpy (:mod:`shipyard.serve.inputs`), handed to
the batcher, and the answer is rendered with orjson straight into a :class:`Response`
(FastAPI's response-model serialisation costs 2.5x more on a 64-row answer). The hot
routes are dispatched by :class:`ServeMiddleware` itself (:class:`LeanRoutes`), past
FastAPI's routing and dependency machinery; their FastAPI definitions still make the
OpenAPI schema. Everything else — prediction ids aside — happens off the request path: a
recorder thread turns answered requests into prediction-log rows (monitor features,
digests, embeddings), gathered for a moment and queued in one go. ``shipyard serve``
freezes its startup heap out of the garbage collector (:func:`tune_gc`).

Every refusal is a :class:`~shipyard.serve.inputs.RequestError` rendered as
``{"error": "<one line>", "kind": "<short name>"}`` (the Open Inference Protocol's error
body, plus a kind); nothing a client sends can make a route answer 500. Every response
carries ``X-Model-Name`` and ``X-Model-Version``: of the model that computed it for
predictions, of the model being served for everything else.

Torch-free: ONNX Runtime, numpy, FastAPI, and the torch-free task halves only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.errors import UserError
from shipyard.serve import schemas
from shipyard.serve.inputs import (
    InputLayout,
    RequestError,
    binary_tensor_array,
    check_count,
    decode_image,
    parse_json,
    predict_instances,
    tensor_array,
    to_array,
    v2_datatype,
)
from shipyard.serve.metrics import Metrics, mark_dead
from shipyard.serve.reload import ModelHolder, NotReady, ReloadOutcome, ReloadRefused
from shipyard.serve.settings import ADMIN_TOKEN_ENV, ServeSettings, load_settings

if TYPE_CHECKING:
    from shipyard.serve.batcher import Batcher
    from shipyard.serve.recorder import Recorder
    from shipyard.serve.runtime import ServedModel

log = logging.getLogger("shipyard.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"
HEADER_NAME = "X-Model-Name"
HEADER_VERSION = "X-Model-Version"
#: the V2 binary data extension (KServe, Triton): the JSON header's length; raw tensors follow
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
#: allocations between young-generation collections in a serving process (CPython: 700)
GC_GEN0_THRESHOLD = 50_000


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson straight into bytes: numpy scalars and arrays included, NaN as null."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def error_response(exc: RequestError) -> Response:
    return json_response({"error": exc.message, "kind": exc.kind}, exc.status, exc.headers)


# -- the server's state ------------------------------------------------------------------------


class Server:
    """Everything one worker holds: settings, metrics, the model, batcher, log, recorder."""

    def __init__(self, settings: ServeSettings, *, tune_gc: bool = False) -> None:
        self.settings = settings
        self.tune_gc = tune_gc
        self.metrics = Metrics()
        self.holder = ModelHolder(
            settings,
            on_swap=self._on_swap,
            on_result=lambda result: self.metrics.reloads.labels(result).inc(),
        )
        self.layout: InputLayout | None = None
        self.batcher: Batcher | None = None
        self.recorder: Recorder | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._label_children: dict[tuple[str, str], Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from shipyard.serve.batcher import Batcher

        settings = self.settings
        try:
            await asyncio.to_thread(self.holder.load_initial)
        except UserError as exc:
            if settings.reload_interval_s <= 0:
                raise
            # A registry source with polling on: start unready and keep trying.
            self.holder.last_error = str(exc)
            log.error(
                "no model loaded yet (will retry every %gs): %s", settings.reload_interval_s, exc
            )
        self.batcher = Batcher(
            self.holder.get,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_rows=settings.max_queue_rows,
            on_batch=self._on_batch,
        )
        await self.batcher.start()
        if settings.prediction_log:
            from shipyard.serve.predlog import default_url
            from shipyard.serve.recorder import Recorder, WriterSettings

            self.recorder = Recorder(
                WriterSettings(
                    url=settings.prediction_log_url or default_url(settings.home_path),
                    spool=str(settings.spool_path),
                    queue_size=settings.prediction_log_queue_size,
                    batch_size=settings.prediction_log_batch_size,
                    flush_interval_s=settings.prediction_log_flush_interval_s,
                    retry_interval_s=settings.prediction_log_retry_interval_s,
                )
            )
            await asyncio.to_thread(self.recorder.start)
        self.holder.start_polling()
        self._periodic = asyncio.create_task(self._refresh_gauges(), name="shipyard-gauges")
        if self.tune_gc:
            tune_gc()
        model = self.holder.current
        what = (
            f"{model.name} v{model.version} ({model.manifest.task}, {model.precision})"
            if model
            else "no model yet"
        )
        log.info(
            "serving %s at http://%s:%s (pid %d, batch <= %d rows, wait <= %g ms)",
            what,
            settings.host,
            settings.port,
            os.getpid(),
            settings.max_batch_size,
            settings.max_wait_ms,
        )

    async def stop(self) -> None:
        """Drain in order: no new model swaps, answer queued requests, write their rows."""
        self.holder.stop_polling()
        if self._periodic is not None:
            self._periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._periodic
        if self.batcher is not None:
            await self.batcher.stop()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        mark_dead()
        log.info("stopped (pid %d)", os.getpid())

    # -- hooks -------------------------------------------------------------------------------

    def _on_swap(self, model: ServedModel) -> None:
        if self.layout is None:  # the input spec never changes on reload (refused if it would)
            self.layout = InputLayout.from_manifest(model.manifest)
        self.metrics.set_model(model.name, model.version, model.precision)

    def _on_batch(self, rows: int, seconds: float) -> None:
        self.metrics.observe_batch(rows, seconds)
        if self.batcher is not None:
            self.metrics.queue_rows.set(self.batcher.queue_rows)

    async def _refresh_gauges(self) -> None:
        """Keep the prediction-log gauges fresh in every worker (a scrape reaches only one)."""
        while True:
            self.refresh_gauges()
            await asyncio.sleep(2.0)

    def refresh_gauges(self) -> None:
        if self.batcher is not None:
            self.metrics.queue_rows.set(self.batcher.queue_rows)
        if self.recorder is not None:
            self.metrics.set_log_stats(self.recorder.stats())

    # -- predicting ----------------------------------------------------------------------------

    def require_layout(self) -> InputLayout:
        if self.layout is None:
            raise RequestError(
                "no model is loaded yet; try again shortly (GET /v2/health/ready)",
                kind="not_ready",
                status=503,
                headers={"Retry-After": "1"},
            )
        return self.layout

    async def predict(self, features: np.ndarray) -> tuple[dict[str, np.ndarray], ServedModel]:
        """Through the batcher, with the 503s a client can retry."""
        from shipyard.serve.batcher import QueueFull

        assert self.batcher is not None
        self.metrics.in_flight.inc()
        try:
            outputs, model = await self.batcher.submit(features)
        except QueueFull as exc:
            retry = max(1, math.ceil(exc.retry_after_s))
            raise RequestError(
                f"{exc}; retry after {retry} s",
                kind="queue_full",
                status=503,
                headers={"Retry-After": str(retry)},
            ) from None
        except NotReady as exc:
            raise RequestError(
                str(exc), kind="not_ready", status=503, headers={"Retry-After": "1"}
            ) from None
        finally:
            self.metrics.in_flight.dec()
            self.metrics.queue_rows.set(self.batcher.queue_rows)
        return outputs, model

    def record(
        self,
        ids: list[str],
        model: ServedModel,
        features: np.ndarray,
        raw: list[Any] | None,
        outputs: dict[str, np.ndarray],
        started: float,
    ) -> None:
        """Count the predictions and hand them to the recorder (a queue put)."""
        manifest = model.manifest
        if manifest.output_kind == "classes" and manifest.labels:
            best = np.bincount(
                outputs["probabilities"].argmax(axis=1), minlength=len(manifest.labels)
            )
            for index in np.flatnonzero(best).tolist():
                self._label_counter(model.name, manifest.labels[index]).inc(int(best[index]))
        else:
            self._label_counter(model.name, "value").inc(len(ids))
        if self.recorder is not None and self.layout is not None:
            from shipyard.serve.recorder import Answered

            self.recorder.put(
                Answered(
                    ids=ids,
                    model_name=model.name,
                    model_version=model.version,
                    task=manifest.task,
                    labels=manifest.labels,
                    columns=self.layout.columns if self.layout.kind == "table" else None,
                    features=features,
                    raw=raw,
                    outputs=outputs,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    created_at=time.time(),
                )
            )

    def _label_counter(self, model: str, label: str) -> Any:
        key = (model, label)
        child = self._label_children.get(key)
        if child is None:
            child = self._label_children[key] = self.metrics.predictions.labels(model, label)
        return child


def tune_gc() -> None:
    """Keep CPython's cyclic garbage collector off the request path of a serving process.

    orjson turns one 3x32x32 image into ~1,000 lists, so with the default threshold (700
    allocations) every request triggered a young collection and every hundredth a full
    one over the whole heap (FastAPI, pydantic, numpy, ONNX Runtime: hundreds of thousands
    of long-lived objects). py-spy put ``gc_collect_main`` at 40% of the 3x32x32 server's
    samples under load. ``gc.freeze()`` moves everything alive after startup into the
    permanent generation (never scanned again), and a larger young threshold makes
    collections rare; request garbage is acyclic and freed by reference counting anyway.
    Only for the ``shipyard serve`` process (the uvicorn factory), not an embedding app.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def new_ids(n: int) -> list[str]:
    """Prediction ids: 32 random hex digits each, one ``os.urandom`` call per request
    (``uuid4()`` per row costs ~2 µs, 130 µs for 64 rows)."""
    blob = os.urandom(16 * n).hex()
    return [blob[i * 32 : (i + 1) * 32] for i in range(n)]


def predictions_body(
    model: ServedModel, outputs: dict[str, np.ndarray], ids: list[str]
) -> dict[str, Any]:
    """The ``/predict`` answer: per row a label and probabilities, or a value."""
    manifest = model.manifest
    predictions: list[dict[str, Any]]
    if manifest.output_kind == "classes" and manifest.labels:
        labels = manifest.labels
        probabilities = outputs["probabilities"]
        best = probabilities.argmax(axis=1).tolist()
        predictions = [
            {"id": i, "label": labels[b], "probabilities": dict(zip(labels, row, strict=True))}
            for i, b, row in zip(ids, best, probabilities.tolist(), strict=True)
        ]
    else:
        values = outputs["value"].reshape(len(ids), -1)[:, 0].tolist()
        predictions = [{"id": i, "value": v} for i, v in zip(ids, values, strict=True)]
    return {"predictions": predictions, "model": {"name": model.name, "version": model.version}}


def model_headers(model: ServedModel) -> dict[str, str]:
    return {HEADER_NAME: model.name, HEADER_VERSION: model.version}


# -- reading requests ------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (also when the client
    sends no Content-Length), before anything is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, declared=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, *, declared: bool = True) -> RequestError:
    """413: ``size`` is the declared Content-Length, or (streamed) what was read so far."""
    what = f"{size:,} bytes" if declared else f"over {limit:,} bytes (and still coming)"
    return RequestError(
        f"the request body is {what}; at most {limit:,} bytes (serve.max_body_bytes)",
        kind="too_large",
        status=413,
    )


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != JSON and not media.endswith("+json"):
        raise RequestError(
            f"Content-Type is {content_type or 'missing'}; expected {JSON}",
            kind="unsupported_media_type",
            status=415,
        )


async def read_json(request: Request, settings: ServeSettings) -> Any:
    require_json(request)
    return parse_json(await read_body(request, settings.max_body_bytes))


async def read_infer_body(request: Request, settings: ServeSettings) -> tuple[Any, bytes | None]:
    """A V2 infer body: JSON, or (binary data extension) a JSON header of
    ``Inference-Header-Content-Length`` bytes followed by the tensors' raw bytes."""
    declared = request.headers.get(INFERENCE_HEADER_LENGTH)
    if declared is None:
        return await read_json(request, settings), None
    body = await read_body(request, settings.max_body_bytes)
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise RequestError(
            f"{INFERENCE_HEADER_LENGTH} is {declared!r}; expected the JSON header's length in "
            f"bytes, 1 to the body's {len(body)}",
            kind="bad_header_length",
        )
    return parse_json(body[:length]), body[length:]


def binary_input(binary: bytes | None, size: Any, data: list[Any] | None) -> bytes:
    """The one input's bytes, checked against its declared ``binary_data_size``."""
    if binary is None:
        raise RequestError(
            f"parameters.{BINARY_DATA_SIZE} is set but the request has no "
            f"{INFERENCE_HEADER_LENGTH} header; send the JSON header's length in it",
            kind="bad_header_length",
        )
    if data is not None:
        raise RequestError(
            f"the input has both `data` and parameters.{BINARY_DATA_SIZE}; send one of them",
            kind="bad_type",
        )
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise RequestError(
            f"parameters.{BINARY_DATA_SIZE} is {size!r} but {len(binary)} bytes follow the JSON "
            "header; expected the exact byte count",
            kind="bad_shape",
        )
    return binary


def validate(model: type[BaseModel], payload: Any) -> Any:
    """A pydantic model from parsed JSON, or a one-line 422 naming the first bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise RequestError(_validation_line(exc.errors()), kind="bad_type") from None


def _validation_line(errors: Any) -> str:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
    message = str(first.get("msg", "invalid"))
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'body'}: {message}{extra}"


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """Image files from a multipart form (any file fields, in order) or a raw image body."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ("multipart/form-data", "application/octet-stream") and not media.startswith(
        "image/"
    ):
        raise RequestError(
            f"Content-Type is {content_type or 'missing'}; expected multipart/form-data with "
            "image files, or one raw image body (Content-Type: image/png, image/jpeg, ...)",
            kind="unsupported_media_type",
            status=415,
        )
    body = await read_body(request, settings.max_body_bytes)
    if media != "multipart/form-data":
        return [("body", body)]
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers,
        stream(),  # type: ignore[arg-type]
        max_files=settings.max_upload_files + 1,  # one more: our own 413 names the limit
        max_fields=32,
        max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(
            f"the multipart body cannot be read ({exc}); expected image files in a "
            f"multipart/form-data body (at most {settings.max_upload_files} files)",
            kind="bad_multipart",
            status=400,
        ) from None
    files: list[tuple[str, bytes]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or key, await value.read()))
    finally:
        await form.close()
    if not files:
        raise RequestError(
            "the form holds no file; send the image(s) as file fields, e.g. "
            "curl -F file=@digit.png .../predict/upload",
            kind="empty",
        )
    return files


# -- middleware ---------------------------------------------------------------------------------


#: a lean route: the route template (the metrics label) and the handler, path params bound
LeanMatch = tuple[str, Callable[[Request], Awaitable[Response]]]


class LeanRoutes:
    """The hot routes — ``POST /predict``, ``/predict/upload`` and the V2 ``infer`` paths —
    dispatched straight from :class:`ServeMiddleware`, past Starlette's router and FastAPI's
    per-request machinery (route matching over every route, ``get_request_handler``, the
    dependency solver, the exception-handler wrapper). A py-spy profile of the digits server
    at 32 clients put that machinery at about a quarter of the busy samples; the handlers
    themselves take a bare :class:`Request`, so FastAPI added nothing but cost.

    The FastAPI route definitions stay registered, unchanged: they generate the OpenAPI
    schema (paths, bodies, responses, examples), and anything this matcher does not take —
    another method, a trailing slash, ``HEAD`` — still goes through FastAPI's router and
    answers exactly as before (405, 404, redirect). The handlers are the very functions the
    FastAPI routes call; refusals are rendered by the same code as the app's
    ``RequestError`` handler, and anything else propagates to the same 500 handler.
    """

    def __init__(self) -> None:
        self.exact: dict[str, Callable[[Request], Awaitable[Response]]] = {}
        self.infer: Callable[[Request, str, str | None], Awaitable[Response]] | None = None

    def match(self, path: str) -> LeanMatch | None:
        handler = self.exact.get(path)
        if handler is not None:
            return path, handler
        infer = self.infer
        if infer is None or not path.startswith("/v2/models/") or not path.endswith("/infer"):
            return None
        # Starlette's ``{param}`` matches ``[^/]+``: the same segments, split once.
        parts = path.split("/")
        if len(parts) == 5 and parts[3]:
            name = parts[3]
            return "/v2/models/{model_name}/infer", lambda r: infer(r, name, None)
        if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
            name, version = parts[3], parts[5]
            return (
                "/v2/models/{model_name}/versions/{model_version}/infer",
                lambda r: infer(r, name, version),
            )
        return None


class ServeMiddleware:
    """Pure ASGI (no per-request task or body copy, unlike BaseHTTPMiddleware): counts and
    times every request by route template, refuses a declared oversized body with 413
    before routing, and adds the serving model's headers to responses that lack them.
    ``POST`` to a hot route is answered here directly (:class:`LeanRoutes`)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        server: Server,
        fastapi: FastAPI,
        lean: LeanRoutes | None = None,
    ) -> None:
        self.app = app
        self.server = server
        self.fastapi = fastapi
        self.lean = lean
        # Prometheus children by label values: ``.labels(...)`` takes a lock and builds a
        # key on every call; the label sets are few (route templates x methods x statuses).
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        server = self.server
        route: str | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                model = server.holder.current
                headers = message.get("headers", [])
                if model is not None and not any(k.lower() == b"x-model-name" for k, _ in headers):
                    headers = list(headers)
                    headers.append((b"x-model-name", model.name.encode()))
                    headers.append((b"x-model-version", model.version.encode()))
                    message["headers"] = headers
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            limit = server.settings.max_body_bytes
            if declared is not None and declared.isdigit() and int(declared) > limit:
                error = _too_large(int(declared), limit)
                server.metrics.errors.labels(error.kind).inc()
                await error_response(error)(scope, receive, send_with_headers)
                return
            lean = (
                self.lean.match(scope["path"]) if self.lean and scope["method"] == "POST" else None
            )
            if lean is None:
                await self.app(scope, receive, send_with_headers)
                return
            route, handler = lean
            try:
                response = await handler(Request(scope, receive))
            except RequestError as exc:  # as the app's RequestError handler does
                server.metrics.errors.labels(exc.kind).inc()
                response = error_response(exc)
            await response(scope, receive, send_with_headers)
        finally:
            if route is None:
                route = self._route(scope)
            key = (route, scope["method"], status)
            counter = self._request_children.get(key)
            if counter is None:
                counter = self._request_children[key] = server.metrics.requests.labels(
                    route, scope["method"], str(status)
                )
            counter.inc()
            latency = self._latency_children.get(route)
            if latency is None:
                latency = self._latency_children[route] = server.metrics.latency.labels(route)
            latency.observe(time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        """The route template (``/v2/models/{model_name}``), never the raw path, so that
        metric labels stay few whatever clients send."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        from starlette.routing import Match

        for candidate in self.fastapi.router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


# -- the app -------------------------------------------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "The body is not valid JSON / multipart."},
    413: {
        "model": schemas.ErrorResponse,
        "description": "Body, instance count or image over a limit.",
    },
    415: {
        "model": schemas.ErrorResponse,
        "description": "Wrong Content-Type, or bytes that are not an image.",
    },
    422: {
        "model": schemas.ErrorResponse,
        "description": "Wrong shape, type, value or columns: the message names the instance and what was expected.",
    },
    503: {
        "model": schemas.ErrorResponse,
        "description": "No model loaded yet, or the queue is full: retry after `Retry-After` seconds.",
        "headers": {
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}
        },
    },
}
MODEL_HEADERS = {
    HEADER_NAME: {"schema": {"type": "string"}, "description": "Name of the model that answered."},
    HEADER_VERSION: {"schema": {"type": "string"}, "description": "Its version."},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": schemas.ErrorResponse,
        "description": "Missing or wrong bearer token.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {
        "model": schemas.ErrorResponse,
        "description": f"Admin routes are disabled: {ADMIN_TOKEN_ENV} is not set.",
    },
    409: {"model": schemas.ErrorResponse, "description": "Refused: the old model keeps serving."},
}


def _ok(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": description, "headers": MODEL_HEADERS}}


def _json_body(model: type[BaseModel], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    if examples:
        media["examples"] = examples
    return {"requestBody": {"required": True, "content": {JSON: media}}}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more image files (any field name).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    schemas.PredictRequest,
    schemas.InferRequest,
    schemas.FeedbackRequest,
)


def create_app_from_env() -> FastAPI:
    """uvicorn's factory in every worker: settings from ``SHIPYARD_SERVE_*``."""
    return create_app(load_settings(), tune_gc=True)


def create_app(settings: ServeSettings, *, tune_gc: bool = False) -> FastAPI:
    """The service for ``settings``; the model loads when the app starts (its lifespan).
    ``tune_gc``: freeze the startup heap and collect rarely (:func:`tune_gc`), for a
    process that does nothing but serve."""
    from shipyard import __version__

    _configure_logging()
    server = Server(settings, tune_gc=tune_gc)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(
        title="Shipyard model server",
        version=__version__,
        description=(
            "Predictions from a Shipyard model package (ONNX Runtime, adaptive batching). "
            "`POST /predict` takes JSON instances, `POST /predict/upload` image files; the "
            "Open Inference Protocol (KServe V2) is under `/v2`. Every response carries "
            "`X-Model-Name` and `X-Model-Version`; every error is "
            '`{"error": "...", "kind": "..."}`.'
        ),
        lifespan=lifespan,
    )
    app.state.server = server
    bearer = HTTPBearer(auto_error=False, description=f"The server's {ADMIN_TOKEN_ENV}.")

    # -- errors -------------------------------------------------------------------------------

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        server.metrics.errors.labels(exc.kind).inc()
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        server.metrics.errors.labels(kind).inc()
        return json_response(
            {"error": str(exc.detail), "kind": kind}, exc.status_code, dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        server.metrics.errors.labels("bad_type").inc()
        return json_response({"error": _validation_line(exc.errors()), "kind": "bad_type"}, 422)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        log.exception("internal error")
        server.metrics.errors.labels("internal").inc()
        return json_response(
            {
                "error": f"internal error ({type(exc).__name__}); the server log has the details",
                "kind": "internal",
            },
            500,
        )

    # -- predict ------------------------------------------------------------------------------

    async def answer(features: np.ndarray, raw: list[Any] | None, started: float) -> Response:
        outputs, model = await server.predict(features)
        ids = new_ids(len(features))
        body = predictions_body(model, outputs, ids)
        server.record(ids, model, features, raw, outputs, started)
        return json_response(body, headers=model_headers(model))

    @app.post(
        "/predict",
        tags=["predict"],
        summary="Predict one or many instances (JSON)",
        response_model=schemas.PredictResponse,
        responses={**_ok(schemas.PredictResponse, "One prediction per instance."), **ERRORS},
        openapi_extra=_json_body(schemas.PredictRequest, schemas.PREDICT_EXAMPLES),
    )
    async def predict(request: Request) -> Response:
        """Images: nested lists height x width (x channels) of numbers 0..255. Tables: objects
        `{column: number or null}` or lists in column order (null: missing). Up to
        `serve.max_instances` instances per request; each prediction has an `id` for
        `POST /feedback`."""
        started = time.perf_counter()
        layout = server.require_layout()
        payload = await read_json(request, settings)
        instances, _ = predict_instances(payload, settings.max_instances)
        features = to_array(layout, instances)
        return await answer(features, instances if layout.kind == "table" else None, started)

    @app.post(
        "/predict/upload",
        tags=["predict"],
        summary="Predict image files (multipart upload or a raw image body)",
        response_model=schemas.PredictResponse,
        responses={**_ok(schemas.PredictResponse, "One prediction per file, in order."), **ERRORS},
        openapi_extra=UPLOAD_BODY,
    )
    async def predict_upload(request: Request) -> Response:
        """For image models: each file is decoded with Pillow, converted to the model's
        channels and resized to its height x width. Bytes that are not an image get 415;
        images over `serve.max_image_pixels` get 413 before they are decoded."""
        started = time.perf_counter()
        layout = server.require_layout()
        if layout.kind != "image":
            raise RequestError(
                "this model takes table rows, not images: POST JSON instances to /predict",
                kind="wrong_endpoint",
                status=415,
            )
        files = await read_uploads(request, settings)
        check_count(
            len(files),
            min(settings.max_upload_files, settings.max_instances),
            "files",
            "serve.max_upload_files",
        )

        def decode() -> np.ndarray:
            return np.stack(
                [
                    decode_image(data, name, layout, settings.max_image_pixels)
                    for name, data in files
                ]
            )

        features = await asyncio.to_thread(decode)  # Pillow is CPU work: keep the loop free
        return await answer(features, None, started)

    # -- feedback -----------------------------------------------------------------------------

    @app.post(
        "/feedback",
        tags=["predict"],
        summary="Record the true label of an earlier prediction",
        status_code=202,
        response_model=schemas.FeedbackResponse,
        responses={
            202: {
                "model": schemas.FeedbackResponse,
                "description": "Recorded (written in the background).",
            },
            **ERRORS,
            409: {"model": schemas.ErrorResponse, "description": "The prediction log is off."},
        },
        openapi_extra=_json_body(schemas.FeedbackRequest),
    )
    async def feedback(request: Request) -> Response:
        """The id is not checked against the log: feedback may arrive before its prediction
        has been written. Class labels must be one of the model's labels."""
        item: schemas.FeedbackRequest = validate(
            schemas.FeedbackRequest, await read_json(request, settings)
        )
        model = server.holder.current
        label: Any = item.label
        if model is not None and model.manifest.output_kind == "classes" and model.manifest.labels:
            labels = model.manifest.labels
            text = _label_text(label)
            if text not in labels:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                raise RequestError(
                    f"label {label!r} is not one of the model's labels ({shown})", kind="bad_label"
                )
            label = text
        elif isinstance(label, str):
            raise RequestError(
                f"label {label!r} is text, but this model predicts numbers; send the true value",
                kind="bad_label",
            )
        if server.recorder is None:
            raise RequestError(
                "the prediction log is off on this server (serve.prediction_log=false): "
                "feedback cannot be stored",
                kind="log_disabled",
                status=409,
            )
        server.recorder.feedback(item.prediction_id, label)
        return json_response({"accepted": True, "prediction_id": item.prediction_id}, 202)

    # -- metrics --------------------------------------------------------------------------------

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    )
    async def metrics() -> Response:
        """Requests, latency, batch sizes, queue, in-flight, model info, predictions per
        class, errors by kind, reloads and the prediction log; all workers aggregated when
        `PROMETHEUS_MULTIPROC_DIR` is set."""
        server.refresh_gauges()
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    # -- Open Inference Protocol -------------------------------------------------------------

    @app.get("/v2", tags=["v2"], summary="Server metadata", response_model=schemas.ServerMetadata)
    async def v2_server() -> Response:
        return json_response({"name": "shipyard", "version": __version__, "extensions": []})

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness", response_model=schemas.ServerLive)
    async def live() -> Response:
        return json_response({"live": True})

    @app.get(
        "/v2/health/ready",
        tags=["v2"],
        summary="Readiness: 200 once a model is loaded, else 503",
        response_model=schemas.ServerReady,
        responses={503: {"model": schemas.ServerReady, "description": "No model loaded (yet)."}},
    )
    async def ready() -> Response:
        ok = server.holder.ready and server.batcher is not None
        return json_response({"ready": ok}, 200 if ok else 503)

    def served(name: str, version: str | None = None) -> ServedModel:
        model = server.holder.current
        if model is None:
            raise RequestError(
                "no model is loaded yet", kind="not_ready", status=503, headers={"Retry-After": "1"}
            )
        if name != model.name:
            raise RequestError(
                f"no model named {name!r} here; this server serves {model.name!r} "
                f"(GET /v2/models/{model.name})",
                kind="unknown_model",
                status=404,
            )
        if version is not None and version != model.version:
            raise RequestError(
                f"{name} has no version {version!r} here; this server serves v{model.version}",
                kind="unknown_model",
                status=404,
            )
        return model

    v2_errors: dict[int | str, dict[str, Any]] = {
        404: {"model": schemas.ErrorResponse, "description": "Unknown model name or version."},
        503: ERRORS[503],
    }

    @app.get(
        "/v2/models/{model_name}",
        tags=["v2"],
        summary="Model metadata: inputs and outputs with datatype and shape",
        response_model=schemas.ModelMetadata,
        responses=v2_errors,
    )
    async def model_metadata(model_name: str) -> Response:
        return json_response(metadata(served(model_name)))

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}",
        tags=["v2"],
        summary="Model metadata of one version",
        response_model=schemas.ModelMetadata,
        responses=v2_errors,
    )
    async def model_version_metadata(model_name: str, model_version: str) -> Response:
        return json_response(metadata(served(model_name, model_version)))

    @app.get(
        "/v2/models/{model_name}/ready",
        tags=["v2"],
        summary="Model readiness",
        response_model=schemas.ModelReady,
        responses=v2_errors,
    )
    async def model_ready(model_name: str) -> Response:
        served(model_name)
        return json_response({"name": model_name, "ready": True})

    async def infer(request: Request, model_name: str, model_version: str | None) -> Response:
        started = time.perf_counter()
        expected = served(model_name, model_version)
        layout = server.require_layout()
        payload, binary = await read_infer_body(request, settings)
        light = payload
        if isinstance(payload, dict) and isinstance(payload.get("inputs"), list):
            # ``data`` can be thousands of numbers: keep it out of pydantic's per-item work
            light = {**payload, "inputs": [_light(i) for i in payload["inputs"]]}
        req: schemas.InferRequest = validate(schemas.InferRequest, light)
        if len(req.inputs) != 1 or req.inputs[0].name != layout.input_name:
            given = ", ".join(repr(i.name) for i in req.inputs)
            raise RequestError(
                f"inputs are {given}; this model takes exactly one input, {layout.input_name!r} "
                f"(GET /v2/models/{expected.name})",
                kind="bad_input_name",
            )
        tensor = req.inputs[0]
        size = (tensor.parameters or {}).get(BINARY_DATA_SIZE)
        if binary is not None or size is not None:
            data = binary_input(binary, size, tensor.data)
            features = binary_tensor_array(
                layout, tensor.shape, tensor.datatype, data, settings.max_instances
            )
        elif tensor.data is None:
            raise RequestError(
                f"input {tensor.name!r} has no data; send `data` (a list of numbers) or its "
                f"bytes after the JSON header with parameters.{BINARY_DATA_SIZE}",
                kind="missing_data",
            )
        else:
            raw = payload["inputs"][0]["data"]
            features = tensor_array(
                layout, tensor.shape, tensor.datatype, raw, settings.max_instances
            )
        known = [spec.name for spec in expected.manifest.outputs]
        wanted = [o.name for o in req.outputs] if req.outputs else known
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise RequestError(
                f"unknown output{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"this model has {', '.join(map(repr, known))}",
                kind="bad_output_name",
            )
        outputs, model = await server.predict(features)
        ids = new_ids(len(features))
        server.record(ids, model, features, None, outputs, started)
        body = {
            "model_name": model.name,
            "model_version": model.version,
            "id": req.id,
            "parameters": {"prediction_ids": ids},
            "outputs": [
                {
                    "name": name,
                    "shape": list(outputs[name].shape),
                    "datatype": v2_datatype(outputs[name].dtype),
                    "data": outputs[name].ravel(),
                }
                for name in wanted
                if name in outputs
            ],
        }
        return json_response(body, headers=model_headers(model))

    infer_responses = {
        **_ok(schemas.InferResponse, "The requested outputs, flat, row-major."),
        **ERRORS,
        404: v2_errors[404],
    }

    @app.post(
        "/v2/models/{model_name}/infer",
        tags=["v2"],
        summary="Inference (Open Inference Protocol)",
        response_model=schemas.InferResponse,
        responses=infer_responses,
        openapi_extra=_json_body(schemas.InferRequest),
    )
    async def v2_infer(model_name: str, request: Request) -> Response:
        """One input tensor named as in the metadata (`features`), FP32 (or another numeric
        type), shape `[rows, ...]` with data flat or nested; outputs `probabilities` or
        `value`, and `embedding` when the model has one."""
        return await infer(request, model_name, None)

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        tags=["v2"],
        summary="Inference on a given version (404 unless it is the one served)",
        response_model=schemas.InferResponse,
        responses=infer_responses,
        openapi_extra=_json_body(schemas.InferRequest),
    )
    async def v2_infer_version(model_name: str, model_version: str, request: Request) -> Response:
        return await infer(request, model_name, model_version)

    # -- admin ----------------------------------------------------------------------------------

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = settings.admin_token
        if token is None:
            raise RequestError(
                f"admin routes are disabled: set {ADMIN_TOKEN_ENV} in the server's environment "
                "to enable them",
                kind="admin_disabled",
                status=403,
            )
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            raise RequestError(
                f"missing or wrong bearer token: send Authorization: Bearer <{ADMIN_TOKEN_ENV}>",
                kind="unauthorized",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="shipyard-admin"'},
            )

    def reload_body(outcome: ReloadOutcome) -> Response:
        previous = outcome.previous
        return json_response(
            {
                "reloaded": outcome.result == "swapped",
                "model": {"name": outcome.model.name, "version": outcome.model.version},
                "previous": {"name": previous.name, "version": previous.version}
                if previous
                else None,
                "detail": outcome.detail,
            },
            headers=model_headers(outcome.model),
        )

    @app.post(
        "/admin/reload",
        tags=["admin"],
        summary="Load the newest version of the served reference (or package folder) now",
        response_model=schemas.ReloadResponse,
        responses={**_ok(schemas.ReloadResponse, "Swapped, or unchanged."), **ADMIN_ERRORS},
        dependencies=[Depends(admin)],
    )
    async def admin_reload() -> Response:
        """A version that fails to download, verify, load or pass its smoke prediction is
        refused with 409 and the old one keeps serving. With several workers this reaches
        one of them; the others follow at their next registry poll."""
        try:
            outcome = await asyncio.to_thread(server.holder.reload)
        except ReloadRefused as exc:
            raise RequestError(str(exc), kind="reload_refused", status=409) from None
        return reload_body(outcome)

    @app.post(
        "/admin/rollback",
        tags=["admin"],
        summary="Move the registry's champion back one version, then reload",
        response_model=schemas.ReloadResponse,
        responses={**_ok(schemas.ReloadResponse, "Rolled back and reloaded."), **ADMIN_ERRORS},
        dependencies=[Depends(admin)],
    )
    async def admin_rollback(
        reason: str | None = Query(
            default=None, max_length=500, description="Recorded in the history."
        ),
    ) -> Response:
        """Calls `shipyard rollback NAME` on the registry (recorded in the champion history),
        then reloads. Only for a server started with `NAME@champion`."""
        try:
            outcome = await asyncio.to_thread(server.holder.rollback, reason)
        except ReloadRefused as exc:
            raise RequestError(str(exc), kind="reload_refused", status=409) from None
        except UserError as exc:
            raise RequestError(str(exc), kind="rollback_refused", status=409) from None
        return reload_body(outcome)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    from shipyard.serve.web import router as web_router

    app.include_router(web_router)
    lean = LeanRoutes()
    lean.exact["/predict"] = predict
    lean.exact["/predict/upload"] = predict_upload
    lean.infer = infer
    app.add_middleware(ServeMiddleware, server=server, fastapi=app, lean=lean)
    return app


def metadata(model: ServedModel) -> dict[str, Any]:
    """V2 model metadata from the manifest: -1 for the batch axis."""
    manifest = model.manifest

    def tensor(spec: Any) -> dict[str, Any]:
        return {
            "name": spec.name,
            "datatype": v2_datatype(spec.dtype),
            "shape": [-1 if d is None else int(d) for d in spec.shape],
        }

    parameters: dict[str, Any] = {
        "task": manifest.task,
        "output_kind": manifest.output_kind,
        "precision": model.precision,
    }
    if manifest.labels:
        parameters["labels"] = manifest.labels
    if manifest.input.columns:
        parameters["columns"] = manifest.input.columns
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [tensor(manifest.input)],
        "outputs": [tensor(spec) for spec in manifest.outputs],
        "parameters": parameters,
    }


def _label_text(label: Any) -> str:
    """A class label as text: ``3`` and ``3.0`` mean the label ``"3"`` (digits)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _light(item: Any) -> Any:
    """A V2 input with ``data`` replaced by an empty list, for schema validation only."""
    return (
        {**item, "data": []}
        if isinstance(item, dict) and isinstance(item.get("data"), list)
        else item
    )


def _configure_logging() -> None:
    """Our INFO lines (ready, reloads) visible under plain uvicorn too, once; the multipart
    parser's warning for every malformed body (already a 400) silenced."""
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    logger = logging.getLogger("shipyard")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
