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
:mod:`~shipyard.serve.middleware` (metrics, headers, lean dispatch); this module defines the
routes.

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
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.errors import UserError
from shipyard.serve import schemas
from shipyard.serve.http import (
    BINARY_DATA_SIZE,
    HEADER_NAME,
    HEADER_VERSION,
    JSON,
    TEXT_OUTPUT,
    binary_input,
    error_response,
    generates_text,
    json_response,
    label_text,
    metadata,
    model_headers,
    new_ids,
    output_tensor,
    predictions_body,
    read_infer_body,
    read_json,
    read_uploads,
    validate,
    validation_line,
    with_text,
    without_data,
)
from shipyard.serve.inputs import (
    RequestError,
    binary_tensor_array,
    check_count,
    decode_image,
    predict_instances,
    tensor_array,
    to_array,
)
from shipyard.serve.middleware import LeanRoutes, ServeMiddleware
from shipyard.serve.reload import ReloadOutcome, ReloadRefused
from shipyard.serve.server import Server
from shipyard.serve.settings import ADMIN_TOKEN_ENV, ServeSettings, load_settings
from shipyard.serve.text_inputs import encode_texts, text_instances, text_tensor

if TYPE_CHECKING:
    from shipyard.serve.runtime import ServedModel


log = logging.getLogger("shipyard.serve")
#: text requests with more characters than this are tokenised in a thread (measured: ~15 µs
#: for a sentence, ~2 ms for a 2,000-character article with truncation)
TOKENIZE_INLINE_CHARS = 4000


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
        server.record(ids, model, logged(features), raw, outputs, started)
        return json_response(body, headers=model_headers(model))

    def logged(features: np.ndarray) -> np.ndarray:
        """What the prediction log gets as features: texts go in as ``raw`` (the log and the
        monitor describe the text, not its token ids), so a text row logs no array."""
        if features.dtype.kind == "i":
            return np.zeros((len(features), 0), dtype=np.float32)
        return features

    async def tokenize(texts: list[str], what: str = "instance") -> np.ndarray:
        """Texts -> token ids by the served model's own tokenizer (loaded with its graph).
        Long texts cost ~2 ms each (truncation tokenises the cut-off tail too), so a large
        request is tokenised in a thread, off the event loop; short ones (~15 µs) inline."""
        model = server.holder.current
        if model is None or model.tokenizer is None:
            raise RequestError(
                "no model is loaded yet", kind="not_ready", status=503, headers={"Retry-After": "1"}
            )
        tokenizer, truncate = model.tokenizer, settings.text_truncate
        if sum(len(t) for t in texts) > TOKENIZE_INLINE_CHARS:
            ids = await asyncio.to_thread(encode_texts, tokenizer, texts, truncate, what)
        else:
            ids = encode_texts(tokenizer, texts, truncate, what)
        return ids  # type: ignore[no-any-return]

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
            return await answer(await tokenize(texts), texts, started)
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
        openapi_extra=_json_body(schemas.FeedbackRequest),
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
            light = {**payload, "inputs": [without_data(i) for i in payload["inputs"]]}
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
        texts: list[str] | None = None
        if layout.kind == "text":
            raw_bytes: bytes | None = None
            data: Any = None
            if binary is not None or size is not None:
                raw_bytes = binary_input(binary, size, tensor.data)
            elif tensor.data is None:
                raise RequestError(
                    f"input {tensor.name!r} has no data; send `data` (a list of strings) or "
                    f"its BYTES after the JSON header with parameters.{BINARY_DATA_SIZE}",
                    kind="missing_data",
                )
            else:
                data = payload["inputs"][0]["data"]
            texts = text_tensor(
                tensor.shape, tensor.datatype, data, raw_bytes, settings.max_instances
            )
            features = await tokenize(texts, "element")
        elif binary is not None or size is not None:
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
        if generates_text(expected):
            known.insert(0, TEXT_OUTPUT)  # the generated ids, decoded by the server
        wanted = [o.name for o in req.outputs] if req.outputs else known
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise RequestError(
                f"unknown output{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"this model has {', '.join(map(repr, known))}",
                kind="bad_output_name",
            )
        outputs, model = await server.predict(features)
        outputs = with_text(model, outputs)
        ids = new_ids(len(features))
        server.record(ids, model, logged(features), texts, outputs, started)
        body = {
            "model_name": model.name,
            "model_version": model.version,
            "id": req.id,
            "parameters": {"prediction_ids": ids},
            "outputs": [output_tensor(name, outputs[name]) for name in wanted if name in outputs],
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
        type), shape `[rows, ...]` with data flat or nested; text models take a BYTES tensor
        `text` of shape `[rows]`. Outputs `probabilities` or `value`, and `embedding` when
        the model has one; a model that generates text answers `summary` (BYTES, one UTF-8
        text per row) beside the generated ids `sequences`."""
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
