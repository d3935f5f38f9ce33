"""Requests to the graph's float32 input, by the package's input spec, or a 4xx that says why.

Every check here ends in a :class:`RequestError` with one line naming the instance (or
column, or file) and what was expected, so a client never sees a 500 for its own input.

Parsing is ``orjson`` + ``numpy``, not pydantic: for a 64-instance digits request
(20 KB) ``orjson.loads`` and one ``np.array`` take about 210 µs against 340 µs for a
pydantic model of nested float lists (and pydantic's lists still have to become an
array). Validation is vectorised on the happy path — one ``np.array`` over all
instances, one finiteness and range check — and only a request that fails is walked
instance by instance to find the first bad one for the message.

Torch-free: numpy, Pillow (uploads) and the package manifest only.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import UserError
from shipyard.export.package import Manifest


class RequestError(UserError):
    """A request the server cannot answer as asked: the client can fix it.

    ``kind`` is a stable, short name for the metrics' error counter and the response body;
    ``status`` is the HTTP status (422 by default); ``headers`` go on the response
    (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self, message: str, *, kind: str, status: int = 422, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.headers = headers

    @property
    def message(self) -> str:
        return str(self)


#: JSON numbers decode to these; bool is excluded on purpose (``true`` is not a pixel)
_NUMBER = (int, float)
#: the V2 input of a text model: a BYTES tensor of UTF-8 texts, one per row
TEXT_INPUT = "text"


@dataclass(frozen=True)
class InputLayout:
    """What one instance of the graph's input looks like, read from the manifest."""

    kind: str  # "image", "table" or "text"
    #: per-instance shape: (height, width, channels) or (columns,)
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()
    input_name: str = "features"

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> InputLayout:
        spec = manifest.input
        tail = tuple(int(d) if d is not None else -1 for d in spec.shape[1:])
        if manifest.tokenizer is not None:
            # Clients send texts (V2: a BYTES tensor named "text"); the server tokenises.
            return cls("text", (), (), TEXT_INPUT)
        if spec.columns:
            return cls("table", (len(spec.columns),), tuple(spec.columns), spec.name)
        if len(tail) == 3:
            return cls("image", tail, (), spec.name)
        raise UserError(  # a package from a newer exporter: say so instead of guessing
            f"this server does not know how to read input {spec.name!r} shaped {spec.shape}"
        )

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        return self.shape[2]

    def expected(self) -> str:
        """What one instance must be, for messages: ``[8, 8] (height, width) of numbers 0..255``."""
        if self.kind == "text":
            return 'a non-empty string, or an object {"text": string}'
        if self.kind == "table":
            shown = ", ".join(self.columns[:8]) + (", ..." if len(self.columns) > 8 else "")
            return (
                f"an object {{column: number or null}} with the columns {shown}, "
                f"or a list of {len(self.columns)} numbers in that order"
            )
        if self.channels == 1:
            return f"[{self.height}, {self.width}] (height, width) of numbers 0..255"
        return (
            f"[{self.height}, {self.width}, {self.channels}] (height, width, channels) "
            "of numbers 0..255"
        )


# -- JSON bodies -----------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """``orjson.loads`` with a one-line 400 for what is not JSON (NaN/Infinity literals included)."""
    import orjson

    if not body.strip():
        raise RequestError("the request body is empty; expected a JSON object", kind="bad_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            f"the request body is not valid JSON ({exc}); NaN and Infinity are not JSON numbers",
            kind="bad_json",
            status=400,
        ) from None


def predict_instances(payload: Any, max_instances: int) -> tuple[list[Any], bool]:
    """``{"instances": [...]}`` or ``{"instance": ...}`` -> (instances, single)."""
    if not isinstance(payload, dict):
        raise RequestError(
            f"the body is a JSON {_json_type(payload)}; expected an object "
            '{"instances": [...]} or {"instance": ...}',
            kind="bad_type",
        )
    unknown = sorted(set(payload) - {"instances", "instance"})
    if unknown:
        raise RequestError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            'expected {"instances": [...]} or {"instance": ...}',
            kind="bad_type",
        )
    if "instances" in payload and "instance" in payload:
        raise RequestError(
            'give either "instances" (a list) or "instance" (one), not both', kind="bad_type"
        )
    if "instance" in payload:
        return [payload["instance"]], True
    if "instances" not in payload:
        raise RequestError(
            'the body has no "instances"; expected {"instances": [...]} or {"instance": ...}',
            kind="bad_type",
        )
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            f'"instances" is a JSON {_json_type(instances)}; expected a list of instances',
            kind="bad_type",
        )
    check_count(len(instances), max_instances, "instances")
    return instances, False


def check_count(count: int, limit: int, what: str, setting: str = "serve.max_instances") -> None:
    """1 to ``limit`` things in one request: 422 for none, 413 for too many."""
    if count == 0:
        raise RequestError(f"{what} is empty; expected 1 to {limit} {what}", kind="empty")
    if count > limit:
        raise RequestError(
            f"{count} {what} in one request; at most {limit} (send several requests, or raise "
            f"{setting})",
            kind="too_many",
            status=413,
        )


def to_array(layout: InputLayout, instances: list[Any]) -> np.ndarray:
    """Instances (JSON-decoded) -> float32 array ``(n, *layout.shape)``."""
    if layout.kind == "table":
        return table_array(layout, instances)
    return image_array(layout, instances)


def image_array(layout: InputLayout, instances: list[Any]) -> np.ndarray:
    """Nested lists ``H x W`` (``x C``) of numbers 0..255 -> ``(n, H, W, C)`` float32."""
    try:
        array = np.array(instances)
    except (ValueError, OverflowError, TypeError):  # ragged, or ints beyond int64
        array = None
    if array is not None and array.dtype.kind in "iuf":
        array = _with_channels(layout, array, batched=True)
        if array is not None:
            array = array.astype(np.float32, copy=False)
            if _pixels_ok(array):
                return array
    # Slow path: find the first bad instance for the message. When every one is fine on its
    # own (a mix of [H, W] and [H, W, 1] instances), they are stacked one by one.
    return np.stack(
        [check_image(layout, instance, f"instance {i}") for i, instance in enumerate(instances)]
    )


def check_image(layout: InputLayout, instance: Any, where: str) -> np.ndarray:
    """One instance to ``(H, W, C)`` float32, or the :class:`RequestError` that names it."""
    if not isinstance(instance, list):
        raise RequestError(
            f"{where} is a JSON {_json_type(instance)}; expected {layout.expected()}",
            kind="bad_type",
        )
    try:
        array = np.array(instance)
    except (ValueError, OverflowError, TypeError):
        raise RequestError(
            f"{where} is ragged (rows of different lengths, or numbers out of range); "
            f"expected {layout.expected()}",
            kind="bad_shape",
        ) from None
    if array.dtype.kind not in "iuf":
        if array.dtype.kind == "b":
            found = "true/false"
        elif array.dtype.kind in "OUS" and array.ndim >= 1 and _has_structure_mismatch(array):
            raise RequestError(
                f"{where} is ragged (rows of different lengths); expected {layout.expected()}",
                kind="bad_shape",
            )
        else:
            found = "null or text"
        raise RequestError(
            f"{where} holds {found} values; expected {layout.expected()}", kind="bad_type"
        )
    shaped = _with_channels(layout, array[np.newaxis], batched=True)
    if shaped is None:
        raise RequestError(
            f"{where} has shape {list(array.shape)}, expected {layout.expected()}",
            kind="bad_shape",
        )
    pixels: np.ndarray = shaped[0].astype(np.float32)
    if not np.isfinite(pixels).all():
        raise RequestError(
            f"{where} has NaN or infinite values; expected {layout.expected()}", kind="not_finite"
        )
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise RequestError(
            f"{where} has values from {low:g} to {high:g}; expected {layout.expected()}",
            kind="out_of_range",
        )
    return pixels


def _with_channels(layout: InputLayout, array: np.ndarray, *, batched: bool) -> np.ndarray | None:
    """``(n, H, W)`` gains the channel axis when the model takes one channel; any other shape
    than ``(n, H, W, C)`` is None."""
    height, width, channels = layout.shape
    if array.ndim == 3 and channels == 1 and array.shape[1:] == (height, width):
        return array[..., np.newaxis]
    if array.ndim == 4 and array.shape[1:] == (height, width, channels):
        return array
    return None


def _pixels_ok(array: np.ndarray) -> bool:
    if array.size == 0:
        return False
    low, high = array.min(), array.max()  # NaN propagates, so one check covers both
    return bool(np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 255)


def _has_structure_mismatch(array: np.ndarray) -> bool:
    """An object array of lists: numpy gave up on a ragged nest, not on a bad element."""
    return array.dtype.kind == "O" and any(isinstance(x, list) for x in array.ravel()[:64])


def table_array(layout: InputLayout, instances: list[Any]) -> np.ndarray:
    """Objects ``{column: number|null}`` or lists in column order -> ``(n, columns)`` float32.

    ``null`` becomes NaN, which the graph fills with the training mean; an unknown or a
    missing column is an error naming it (a typo must not silently become "missing").
    """
    columns = layout.columns
    width = len(columns)
    rows: list[list[float]] = []
    expected_keys = set(columns)
    for index, instance in enumerate(instances):
        if isinstance(instance, dict):
            keys = set(instance)
            if keys != expected_keys:
                raise RequestError(_column_message(index, keys, columns), kind="bad_columns")
            values = [instance[name] for name in columns]
        elif isinstance(instance, list):
            if len(instance) != width:
                raise RequestError(
                    f"instance {index} has {len(instance)} values, expected {width} "
                    f"(the columns {', '.join(columns)}, in that order)",
                    kind="bad_shape",
                )
            values = instance
        else:
            raise RequestError(
                f"instance {index} is a JSON {_json_type(instance)}; expected {layout.expected()}",
                kind="bad_type",
            )
        row: list[float] = []
        for column, value in zip(columns, values, strict=True):
            if value is None:
                row.append(math.nan)
            elif isinstance(value, _NUMBER) and not isinstance(value, bool):
                number = float(value)
                if not math.isfinite(number) or abs(number) > 3.4e38:
                    raise RequestError(
                        f"instance {index}, column {column!r}: {value!r} is outside the float32 "
                        "range; expected a finite number, or null for a missing value",
                        kind="not_finite",
                    )
                row.append(number)
            else:
                raise RequestError(
                    f"instance {index}, column {column!r} is {_json_type(value)} {_short(value)}; "
                    "expected a number, or null for a missing value",
                    kind="bad_type",
                )
        rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(len(rows), width)


def table_records(layout: InputLayout, array: np.ndarray) -> list[dict[str, float | None]]:
    """Rows as ``{column: value}`` (None for missing) for the prediction log: tables are
    stored raw, so a logged row can be replayed against another model."""
    columns = layout.columns
    return [
        {c: (None if math.isnan(v) else v) for c, v in zip(columns, row, strict=True)}
        for row in array.astype(np.float64).tolist()
    ]


def _column_message(index: int, keys: set[str], columns: tuple[str, ...]) -> str:
    unknown = sorted(keys - set(columns))
    missing = [c for c in columns if c not in keys]
    parts = []
    if unknown:
        parts.append(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if missing:
        parts.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return (
        f"instance {index} has {' and '.join(parts)}; expected every column of "
        f"{', '.join(columns)} (null for a missing value)"
    )


# -- Open Inference Protocol tensors ----------------------------------------------------------

#: V2 datatypes a request may use for the input; all become float32 for the graph
V2_NUMERIC = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def v2_datatype(dtype: str | np.dtype[Any]) -> str:
    """numpy dtype (name) -> V2 datatype name."""
    name = np.dtype(dtype).name
    return {"float32": "FP32", "float64": "FP64", "float16": "FP16", "bool": "BOOL"}.get(
        name, name.upper()
    )


def _tensor_spec(layout: InputLayout, shape: list[int], datatype: str, max_instances: int) -> str:
    """Check a V2 input's datatype and shape against the model; the expected-shape text."""
    expected = [-1, *layout.shape]
    what = f"shape {expected} (-1: the batch) of {_v2_values(layout)}"
    if datatype not in V2_NUMERIC:
        raise RequestError(
            f"input datatype {datatype!r} is not supported; expected FP32 (or another numeric "
            f"type: {', '.join(V2_NUMERIC)})",
            kind="bad_type",
        )
    if len(shape) != len(expected) or any(
        s != e for s, e in zip(shape[1:], expected[1:], strict=False)
    ):
        raise RequestError(f"input shape {shape}; expected {what}", kind="bad_shape")
    check_count(shape[0], max_instances, "rows in the input tensor")
    return what


def tensor_array(
    layout: InputLayout, shape: list[int], datatype: str, data: Any, max_instances: int
) -> np.ndarray:
    """A V2 input tensor (``shape``, ``datatype``, ``data`` flat or nested, row-major) ->
    ``(n, *layout.shape)`` float32, checked like JSON instances."""
    what = _tensor_spec(layout, shape, datatype, max_instances)
    try:
        flat = np.array(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            f"input data is not a (flat or nested) list of numbers; expected {what}",
            kind="bad_type",
        ) from None
    if flat.size != math.prod(shape):
        raise RequestError(
            f"input data has {flat.size} values but shape {shape} needs {math.prod(shape)}",
            kind="bad_shape",
        )
    return _checked(layout, flat.reshape(shape))


def binary_tensor_array(
    layout: InputLayout, shape: list[int], datatype: str, data: bytes, max_instances: int
) -> np.ndarray:
    """A V2 input tensor sent as raw little-endian bytes (the binary data extension) ->
    ``(n, *layout.shape)`` float32. No parsing: a 3x32x32 UINT8 image is 3,072 bytes and
    one ``frombuffer``, against about 250 us of JSON and list conversion."""
    _tensor_spec(layout, shape, datatype, max_instances)
    dtype = np.dtype(V2_NUMERIC[datatype]).newbyteorder("<")
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise RequestError(
            f"the input's binary data is {len(data)} bytes; shape {shape} of {datatype} needs "
            f"{needed}",
            kind="bad_shape",
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype == np.uint8:  # every value is a valid pixel: nothing to check
        return array.astype(np.float32)
    return _checked(layout, array)


def _checked(layout: InputLayout, array: np.ndarray) -> np.ndarray:
    """Pixels must be finite 0..255; table values finite float32 (NaN: missing)."""
    if layout.kind == "image":
        if not np.isfinite(array).all():
            raise RequestError(
                "input data has NaN or infinite values; expected numbers 0..255",
                kind="not_finite",
            )
        if array.min() < 0 or array.max() > 255:
            raise RequestError(
                f"input data has values from {array.min():g} to {array.max():g}; "
                "expected numbers 0..255",
                kind="out_of_range",
            )
    elif np.isinf(array).any() or (np.abs(np.nan_to_num(array)) > 3.4e38).any():
        raise RequestError(
            "input data has infinite values or values outside float32; expected finite numbers "
            "(NaN marks a missing value)",
            kind="not_finite",
        )
    return array.astype(np.float32)


def _v2_values(layout: InputLayout) -> str:
    if layout.kind == "image":
        return "numbers 0..255 (height, width, channels)"
    return f"numbers in the column order {', '.join(layout.columns)}"


# -- uploads ---------------------------------------------------------------------------------


def decode_image(data: bytes, name: str, layout: InputLayout, max_pixels: int) -> np.ndarray:
    """Image file bytes -> ``(H, W, C)`` float32 in the package's size and channels.

    Pillow reads only the header on ``open``, so the pixel cap is checked before anything
    is decompressed (a 50 KB PNG can claim 100k x 100k pixels). EXIF orientation is
    applied, the image converted to the model's channels (L or RGB) and resized to its
    height and width (bilinear), which is what a person uploading a photo expects.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if layout.kind != "image":
        raise RequestError(
            "this model takes table rows, not images: POST JSON to /predict",
            kind="wrong_endpoint",
            status=415,
        )
    if not data:
        raise RequestError(f"file {name!r} is empty; expected an image file", kind="empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError(
            f"file {name!r} is not an image Pillow can read; expected PNG, JPEG, GIF, BMP, TIFF "
            "or WebP",
            kind="not_an_image",
            status=415,
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(
            f"file {name!r} is too large to decode safely; at most {max_pixels:,} pixels",
            kind="image_too_large",
            status=413,
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            f"file {name!r} is {width}x{height} = {width * height:,} pixels; at most "
            f"{max_pixels:,} (serve.max_image_pixels)",
            kind="image_too_large",
            status=413,
        )
    mode = {1: "L", 3: "RGB"}.get(layout.channels)
    if mode is None:
        raise RequestError(
            f"this model takes {layout.channels}-channel images, which uploads cannot build; "
            "POST the pixels as JSON to /predict",
            kind="wrong_endpoint",
            status=415,
        )
    try:
        picture: Image.Image = ImageOps.exif_transpose(image) or image
        picture = picture.convert(mode)
        if picture.size != (layout.width, layout.height):
            picture = picture.resize((layout.width, layout.height), Image.Resampling.BILINEAR)
        pixels = np.asarray(picture, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RequestError(
            f"file {name!r} is a damaged or truncated image ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})",
            kind="bad_image",
        ) from None
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    return pixels


def image_digests(images: np.ndarray) -> list[dict[str, Any]]:
    """Compact stand-ins for images in the prediction log, one per row of ``images``: the
    SHA-256 of its uint8 pixels and its shape (the pixels would dwarf every other column).
    The uint8 conversion runs once for the batch; hashing reads each row in place."""
    import hashlib

    pixels = np.ascontiguousarray(images.astype(np.uint8))
    shape = list(pixels.shape[1:])
    return [{"sha256": hashlib.sha256(row).hexdigest(), "shape": shape} for row in pixels]


# -- helpers ---------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, _NUMBER):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
