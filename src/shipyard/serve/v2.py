"""The Open Inference Protocol (KServe V2) routes: server and model metadata, health, and
``infer`` on JSON or binary tensors. ``add_v2_routes`` returns the ``infer`` coroutine so
that :class:`~shipyard.serve.middleware.LeanRoutes` can dispatch it past FastAPI's routing
(the route definitions still make the OpenAPI schema)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from shipyard.serve import schemas
from shipyard.serve.http import (
    BINARY_DATA_SIZE,
    TEXT_OUTPUT,
    binary_input,
    generates_text,
    json_response,
    log_features,
    metadata,
    model_headers,
    new_ids,
    output_tensor,
    read_infer_body,
    validate,
    with_text,
    without_data,
)
from shipyard.serve.inputs import RequestError, binary_tensor_array, tensor_array
from shipyard.serve.openapi_docs import ERRORS, json_body, ok
from shipyard.serve.server import Server
from shipyard.serve.settings import ServeSettings
from shipyard.serve.text_inputs import text_tensor

if TYPE_CHECKING:
    from shipyard.serve.runtime import ServedModel

Infer = Callable[[Request, str, "str | None"], Awaitable[Response]]


def add_v2_routes(app: FastAPI, server: Server, settings: ServeSettings) -> Infer:
    """Adds the ``/v2`` routes to ``app``; returns ``infer(request, name, version)``."""
    from shipyard import __version__

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
        is_ready = server.holder.ready and server.batcher is not None
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

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
            features = await server.tokenize(texts, "element")
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
        server.record(ids, model, log_features(features), texts, outputs, started)
        body = {
            "model_name": model.name,
            "model_version": model.version,
            "id": req.id,
            "parameters": {"prediction_ids": ids},
            "outputs": [output_tensor(name, outputs[name]) for name in wanted if name in outputs],
        }
        return json_response(body, headers=model_headers(model))

    infer_responses = {
        **ok(schemas.InferResponse, "The requested outputs, flat, row-major."),
        **ERRORS,
        404: v2_errors[404],
    }

    @app.post(
        "/v2/models/{model_name}/infer",
        tags=["v2"],
        summary="Inference (Open Inference Protocol)",
        response_model=schemas.InferResponse,
        responses=infer_responses,
        openapi_extra=json_body(schemas.InferRequest),
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
        openapi_extra=json_body(schemas.InferRequest),
    )
    async def v2_infer_version(model_name: str, model_version: str, request: Request) -> Response:
        return await infer(request, model_name, model_version)

    return infer
