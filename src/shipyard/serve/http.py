"""Reading requests and writing responses: size-capped bodies, JSON, V2 binary tensors,
uploads, one-line validation errors, and orjson responses with the model headers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from shipyard.serve.inputs import (
    RequestError,
    parse_json,
    v2_datatype,
)
from shipyard.serve.settings import ServeSettings
from shipyard.tasks.base import OutputKind

if TYPE_CHECKING:
    from shipyard.serve.runtime import ServedModel


JSON = "application/json"
HEADER_NAME = "X-Model-Name"
HEADER_VERSION = "X-Model-Version"
#: the V2 binary data extension (KServe, Triton): the JSON header's length; raw tensors follow
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
#: a text-generating model's answer: the ``/predict`` field and the V2 BYTES output
TEXT_OUTPUT = "summary"
#: a text-generating model's graph output: the generated token ids
SEQUENCES = "sequences"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson straight into bytes: numpy scalars and arrays included, NaN as null."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def error_response(exc: RequestError) -> Response:
    return json_response({"error": exc.message, "kind": exc.kind}, exc.status, exc.headers)


def new_ids(n: int) -> list[str]:
    """Prediction ids: 32 random hex digits each, one ``os.urandom`` call per request
    (``uuid4()`` per row costs ~2 µs, 130 µs for 64 rows)."""
    blob = os.urandom(16 * n).hex()
    return [blob[i * 32 : (i + 1) * 32] for i in range(n)]


def generates_text(model: ServedModel) -> bool:
    """Whether the model's output kind is ``text`` (generated text, e.g. a summary)."""
    return model.manifest.output_kind == OutputKind.TEXT.value


def with_text(model: ServedModel, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A text-generating model's outputs with the generated texts added as
    :data:`TEXT_OUTPUT` (a numpy ``str`` array, one text per row) and ``sequences`` cut to
    the request's own longest row: the batcher pads a request's rows to the whole batch's
    longest, so without the cut an answer's width would depend on its neighbours. Other
    models' outputs are returned as they are."""
    if not generates_text(model):
        return outputs
    sequences = trim_padding(outputs[SEQUENCES], model.pad_id)
    texts = model.decode_text(sequences)
    return {**outputs, SEQUENCES: sequences, TEXT_OUTPUT: np.array(texts, dtype=np.str_)}


def trim_padding(sequences: np.ndarray, pad_id: int | None) -> np.ndarray:
    """``sequences`` without the trailing columns that are padding in every row (one
    column at least, as the session gives)."""
    if pad_id is None or sequences.ndim != 2 or sequences.shape[1] <= 1:
        return sequences
    real = np.flatnonzero((sequences != pad_id).any(axis=0))
    width = int(real[-1]) + 1 if len(real) else 1
    return sequences[:, :width]


def log_features(features: np.ndarray) -> np.ndarray:
    """What the prediction log gets as features: texts go in as ``raw`` (the log and the
    monitor describe the text, not its token ids), so a text row logs no array."""
    if features.dtype.kind == "i":
        return np.zeros((len(features), 0), dtype=np.float32)
    return features


def output_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """One V2 response output: texts as ``BYTES`` (a list of strings), numbers flat."""
    if value.dtype.kind in "US":
        return {
            "name": name,
            "shape": list(value.shape),
            "datatype": "BYTES",
            "data": value.tolist(),
        }
    return {
        "name": name,
        "shape": list(value.shape),
        "datatype": v2_datatype(value.dtype),
        "data": value.ravel(),
    }


def predictions_body(
    model: ServedModel, outputs: dict[str, np.ndarray], ids: list[str]
) -> dict[str, Any]:
    """The ``/predict`` answer: per row a label and probabilities, a value, or (a model
    that generates text) the generated text as ``summary``."""
    manifest = model.manifest
    predictions: list[dict[str, Any]]
    if generates_text(model):
        texts = (
            outputs[TEXT_OUTPUT].tolist()
            if TEXT_OUTPUT in outputs
            else model.decode_text(outputs[SEQUENCES])
        )
        predictions = [{"id": i, TEXT_OUTPUT: t} for i, t in zip(ids, texts, strict=True)]
    elif manifest.output_kind == "classes" and manifest.labels:
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
        raise too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit, declared=False)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, limit: int, *, declared: bool = True) -> RequestError:
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
        raise RequestError(validation_line(exc.errors()), kind="bad_type") from None


def validation_line(errors: Any) -> str:
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
    inputs = [tensor(manifest.input)]
    if manifest.tokenizer is not None:
        # Clients send texts; the server tokenises them into the graph's token ids.
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        parameters["max_length"] = manifest.tokenizer.max_length
    outputs = [tensor(spec) for spec in manifest.outputs]
    if generates_text(model):
        # The server decodes the generated ids into one UTF-8 text per row.
        outputs.insert(0, {"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]})
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
    }


def label_text(label: Any) -> str:
    """A class label as text: ``3`` and ``3.0`` mean the label ``"3"`` (digits)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def without_data(item: Any) -> Any:
    """A V2 input with ``data`` replaced by an empty list, for schema validation only."""
    return (
        {**item, "data": []}
        if isinstance(item, dict) and isinstance(item.get("data"), list)
        else item
    )
