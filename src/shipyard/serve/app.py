"""The HTTP service: FastAPI app factory, endpoints, lifespan.

``create_app(settings)`` builds one app; ``create_app_from_env()`` is the factory uvicorn
calls in every worker (``shipyard serve`` exports the settings as ``SHIPYARD_SERVE_*``
variables first). The lifespan loads the model (:mod:`shipyard.serve.reload`), starts the
batcher (:mod:`shipyard.serve.batcher`) and the prediction log's writer
(:mod:`shipyard.serve.recorder`); on shutdown — uvicorn's graceful SIGTERM handling, after
in-flight requests have been answered — it drains the batcher and flushes the log.

The request path is kept short on purpose: the body is read with a size cap, parsed with
orjson, checked into a float32 array with numpy (:mod:`shipyard.serve.inputs`), handed to
the batcher, and the answer is rendered with orjson straight into a :class:`Response`
(FastAPI's response-model serialisation costs 2.5x more on a 64-row answer). The hot
routes are dispatched by :class:`ServeMiddleware` itself (:class:`LeanRoutes`), past
FastAPI's routing and dependency machinery; their FastAPI definitions still make the
OpenAPI schema. Everything else — prediction ids aside — happens off the request path: a
recorder thread hands answered requests, gathered for 50 ms, to the prediction-log writer
process as one binary frame (:mod:`shipyard.serve.recorder`), where rows are built and
written. ``shipyard serve`` freezes its startup heap out of the garbage collector
(:func:`~shipyard.serve.server.tune_gc`). The pieces: :mod:`~shipyard.serve.server` (what a
worker holds), :mod:`~shipyard.serve.http` (reading and answering requests),
:mod:`~shipyard.serve.middleware` (metrics, headers, lean dispatch),
:mod:`~shipyard.serve.v2` (the Open Inference Protocol routes),
:mod:`~shipyard.serve.openapi_docs` (the shared OpenAPI descriptions); this module defines
the predict, feedback, metrics and admin routes.

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
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.errors import UserError
from shipyard.serve import schemas
from shipyard.serve.http import (
    error_response,
    generates_text,
    json_response,
    label_text,
    log_features,
    model_headers,
    new_ids,
    predictions_body,
    read_json,
    read_uploads,
    validate,
    validation_line,
    with_text,
)
from shipyard.serve.inputs import (
    RequestError,
    check_count,
    decode_image,
    predict_instances,
    to_array,
)
from shipyard.serve.middleware import LeanRoutes, ServeMiddleware
from shipyard.serve.openapi_docs import (
    ADMIN_ERRORS,
    ERRORS,
    REQUEST_MODELS,
    UPLOAD_BODY,
    json_body,
    ok,
)
from shipyard.serve.reload import ReloadOutcome, ReloadRefused
from shipyard.serve.server import Server
from shipyard.serve.settings import ADMIN_TOKEN_ENV, ServeSettings, load_settings
from shipyard.serve.text_inputs import text_instances
from shipyard.serve.v2 import add_v2_routes

if TYPE_CHECKING:
    pass


log = logging.getLogger("shipyard.serve")


# -- the app -------------------------------------------------------------------------------------


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
        return json_response({"error": validation_line(exc.errors()), "kind": "bad_type"}, 422)

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
        outputs = with_text(model, outputs)
        ids = new_ids(len(features))
        body = predictions_body(model, outputs, ids)
        server.record(ids, model, log_features(features), raw, outputs, started)
        return json_response(body, headers=model_headers(model))

    @app.post(
        "/predict",
        tags=["predict"],
        summary="Predict one or many instances (JSON)",
        response_model=schemas.PredictResponse,
        responses={**ok(schemas.PredictResponse, "One prediction per instance."), **ERRORS},
        openapi_extra=json_body(schemas.PredictRequest, schemas.PREDICT_EXAMPLES),
    )
    async def predict(request: Request) -> Response:
        """Images: nested lists height x width (x channels) of numbers 0..255. Tables: objects
        `{column: number or null}` or lists in column order (null: missing). Texts: strings
        or `{"text": string}`; a model that generates text answers a `summary` per
        instance. Up to
        `serve.max_instances` instances per request; each prediction has an `id` for
        `POST /feedback`."""
        started = time.perf_counter()
        layout = server.require_layout()
        payload = await read_json(request, settings)
        instances, _ = predict_instances(payload, settings.max_instances)
        if layout.kind == "text":
            texts = text_instances(layout, instances)
            return await answer(await server.tokenize(texts), texts, started)
        features = to_array(layout, instances)
        return await answer(features, instances if layout.kind == "table" else None, started)

    @app.post(
        "/predict/upload",
        tags=["predict"],
        summary="Predict image files (multipart upload or a raw image body)",
        response_model=schemas.PredictResponse,
        responses={**ok(schemas.PredictResponse, "One prediction per file, in order."), **ERRORS},
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
                f"this model takes {'texts' if layout.kind == 'text' else 'table rows'}, not "
                "images: POST JSON instances to /predict",
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
        openapi_extra=json_body(schemas.FeedbackRequest),
    )
    async def feedback(request: Request) -> Response:
        """The id is not checked against the log: feedback may arrive before its prediction
        has been written. Class labels must be one of the model's labels; a model that
        generates text takes the reference text (e.g. the true summary) as the label."""
        item: schemas.FeedbackRequest = validate(
            schemas.FeedbackRequest, await read_json(request, settings)
        )
        model = server.holder.current
        label: Any = item.label
        if model is not None and model.manifest.output_kind == "classes" and model.manifest.labels:
            labels = model.manifest.labels
            text = label_text(label)
            if text not in labels:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                raise RequestError(
                    f"label {label!r} is not one of the model's labels ({shown})", kind="bad_label"
                )
            label = text
        elif model is not None and generates_text(model):
            if not isinstance(label, str) or not label.strip():
                found = "an empty text" if isinstance(label, str) else f"the number {label!r}"
                raise RequestError(
                    f"label is {found}, but this model generates text; send the reference "
                    "text (e.g. the true summary) as the label",
                    kind="bad_label",
                )
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

    infer = add_v2_routes(app, server, settings)

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
        responses={**ok(schemas.ReloadResponse, "Swapped, or unchanged."), **ADMIN_ERRORS},
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
        responses={**ok(schemas.ReloadResponse, "Rolled back and reloaded."), **ADMIN_ERRORS},
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
    from shipyard.serve.monitoring import router as monitoring_router
    from shipyard.serve.web import router as web_router

    app.include_router(monitoring_router)
    app.include_router(web_router)
    lean = LeanRoutes()
    lean.exact["/predict"] = predict
    lean.exact["/predict/upload"] = predict_upload
    lean.infer = infer
    app.add_middleware(ServeMiddleware, server=server, fastapi=app, lean=lean)
    return app


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
