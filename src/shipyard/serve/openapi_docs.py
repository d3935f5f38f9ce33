"""The OpenAPI descriptions the routes share: error responses, model headers, request
bodies. Kept apart from the routes so that ``app`` (predict, feedback, admin) and ``v2``
(the Open Inference Protocol) document their answers alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shipyard.serve import schemas
from shipyard.serve.http import HEADER_NAME, HEADER_VERSION, JSON
from shipyard.serve.settings import ADMIN_TOKEN_ENV

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


def ok(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": description, "headers": MODEL_HEADERS}}


def json_body(model: type[BaseModel], examples: dict[str, Any] | None = None) -> dict[str, Any]:
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
