"""Request and response models of the HTTP API: the OpenAPI schema and its examples.

The hot paths (``/predict``, ``/v2/models/{name}/infer``) do not validate requests with
these models: they parse with orjson and check into numpy (:mod:`shipyard.serve.inputs`,
which says why), and they render responses with orjson. The models here are the
*contract* — they document every body in ``/openapi.json`` with examples, and the tests
validate real responses against them, so the schema cannot drift from what is served.

The Open Inference Protocol (KServe V2) models follow its REST spec: errors are
``{"error": "..."}``, which :class:`ErrorResponse` extends with a ``kind``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr

DIGIT = [
    [0, 0, 80, 208, 160, 16, 0, 0],
    [0, 16, 240, 128, 208, 112, 0, 0],
    [0, 48, 240, 16, 160, 128, 0, 0],
    [0, 64, 192, 0, 128, 128, 0, 0],
    [0, 80, 128, 0, 144, 128, 0, 0],
    [0, 64, 176, 0, 176, 112, 0, 0],
    [0, 32, 224, 96, 224, 48, 0, 0],
    [0, 0, 96, 224, 128, 0, 0, 0],
]
DOCUMENT = (
    "We present a method for summarising scientific papers. An encoder reads the paper's "
    "introduction and a decoder writes its abstract one token at a time. On the ACLSum "
    "benchmark the model beats the lead-3 baseline by four ROUGE-L points."
)
DOCUMENT_SUMMARY = "a method that writes a paper's abstract from its introduction."
WINE_ROW = {
    "alcohol": 13.2,
    "malic_acid": 1.78,
    "ash": 2.14,
    "alcalinity_of_ash": 11.2,
    "magnesium": 100.0,
    "total_phenols": 2.65,
    "flavanoids": 2.76,
    "nonflavanoid_phenols": 0.26,
    "proanthocyanins": 1.28,
    "color_intensity": 4.38,
    "hue": 1.05,
    "od280/od315_of_diluted_wines": 3.4,
    "proline": None,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx: one line that says what was wrong and what was expected."""

    error: str = Field(description="What was wrong and what was expected, in one line.")
    kind: str = Field(
        description="A stable short name for the error (bad_shape, bad_type, not_finite, "
        "empty, too_many, too_large, bad_json, unsupported_media_type, not_an_image, "
        "image_too_large, bad_columns, text_too_long, unknown_model, queue_full, not_ready, "
        "unauthorized, "
        "admin_disabled, reload_refused, not_found, method_not_allowed, internal)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "instance 3 has shape [8, 7], expected [8, 8] (height, width) of "
                    "numbers 0..255",
                    "kind": "bad_shape",
                }
            ]
        }
    )


class ModelRef(BaseModel):
    """The model version that produced a response (also in ``X-Model-Name`` / ``X-Model-Version``)."""

    name: str
    version: str


# -- /predict ---------------------------------------------------------------------------------

Pixels = list[list[float]] | list[list[list[float]]]
Row = dict[str, float | None] | list[float | None]


class TextInstance(_Model):
    """A text model's instance as an object (a plain string works too)."""

    text: str = Field(min_length=1)


Text = str | TextInstance


class PredictRequest(_Model):
    """One instance (``instance``) or several (``instances``), shaped by the model's input.

    Images: nested lists height x width (x channels) of numbers 0..255. Tables: an object
    ``{column: number or null}`` (null: missing, filled with the training mean) or a list
    of numbers in the column order. Texts: a string or ``{"text": string}`` (longer than
    the model's max_length tokens: truncated, or 413 with serve.text_truncate=false).
    ``GET /v2/models/{name}`` shows the model's input.
    """

    instances: list[Pixels | Row | Text] | None = Field(
        default=None, description="Up to serve.max_instances instances."
    )
    instance: Pixels | Row | Text | None = Field(default=None, description="A single instance.")


PREDICT_EXAMPLES: dict[str, Any] = {
    "image": {
        "summary": "Digits: one 8x8 grey image, pixels 0..255",
        "value": {"instances": [DIGIT]},
    },
    "table": {
        "summary": "Wine: a row of named columns (null: missing)",
        "value": {"instances": [WINE_ROW]},
    },
    "single": {"summary": "A single instance", "value": {"instance": DIGIT}},
    "text": {
        "summary": "Text: strings (a text model)",
        "value": {"instances": ["Shares in the carmaker rose after strong quarterly sales."]},
    },
    "document": {
        "summary": "Document: a text to summarise (a model that generates text)",
        "value": {"instances": [DOCUMENT]},
    },
}


class ClassPrediction(BaseModel):
    id: str = Field(description="Prediction id: send it back with POST /feedback.")
    label: str = Field(description="The most probable class.")
    probabilities: dict[str, float] = Field(description="Every class label -> probability.")


class ValuePrediction(BaseModel):
    id: str = Field(description="Prediction id: send it back with POST /feedback.")
    value: float = Field(description="The predicted number.")


class SummaryPrediction(BaseModel):
    id: str = Field(description="Prediction id: send it back with POST /feedback.")
    summary: str = Field(
        description="The generated text (output_kind text), decoded by the server; the "
        "model's own decoding settings (generation.json) apply."
    )


class PredictResponse(BaseModel):
    """One prediction per instance, in order, and the model version that made them: a
    label and probabilities (classes), a value (numbers) or a summary (generated text)."""

    predictions: list[ClassPrediction | ValuePrediction | SummaryPrediction]
    model: ModelRef

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "predictions": [
                        {
                            "id": "5f0c3b7e2a4d4c1f9f3a1d2e3c4b5a69",
                            "label": "0",
                            "probabilities": {
                                str(d): (0.982 if d == 0 else 0.002) for d in range(10)
                            },
                        }
                    ],
                    "model": {"name": "digits", "version": "3"},
                },
                {
                    "predictions": [
                        {"id": "9a1e2b3c4d5e6f708192a3b4c5d6e7f8", "summary": DOCUMENT_SUMMARY}
                    ],
                    "model": {"name": "aclsum", "version": "1"},
                },
            ]
        }
    )


# -- /feedback --------------------------------------------------------------------------------


class FeedbackRequest(_Model):
    """The true outcome of an earlier prediction, for live accuracy and retraining."""

    prediction_id: str = Field(min_length=1, max_length=128)
    # strict: lax mode would take ``false``/``true`` as 0.0/1.0 (the label "0"/"1"), which
    # the schema (string or number) does not allow; JSON integers are still numbers
    label: StrictStr | StrictFloat = Field(
        description="The true class label (classes), the true value (numbers) or the "
        "reference text, e.g. the true summary (a model that generates text)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prediction_id": "5f0c3b7e2a4d4c1f9f3a1d2e3c4b5a69", "label": "0"},
                {"prediction_id": "9a1e2b3c4d5e6f708192a3b4c5d6e7f8", "label": DOCUMENT_SUMMARY},
            ]
        },
    )


class FeedbackResponse(BaseModel):
    accepted: bool = True
    prediction_id: str


# -- admin ------------------------------------------------------------------------------------


class ReloadResponse(BaseModel):
    """What a reload or rollback did: ``reloaded`` is false when the version did not change."""

    reloaded: bool
    model: ModelRef
    previous: ModelRef | None = None
    detail: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reloaded": True,
                    "model": {"name": "digits", "version": "4"},
                    "previous": {"name": "digits", "version": "3"},
                    "detail": "now serving digits v4 (was v3)",
                }
            ]
        }
    )


# -- Open Inference Protocol (KServe V2) --------------------------------------------------------


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32, FP64, INT64, ... (V2 tensor data types).")
    shape: list[int] = Field(description="-1 is a dynamic axis (the batch).")
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "digits",
                    "versions": ["3"],
                    "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8, 8, 1]}],
                    "outputs": [
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                        {"name": "embedding", "datatype": "FP32", "shape": [-1, 64]},
                    ],
                    "parameters": {"task": "image", "output_kind": "classes"},
                }
            ]
        }
    )


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(_Model):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None,
        description=(
            "Row-major values, flat or nested. Omitted when the tensor travels as raw bytes "
            "after the JSON header (the binary data extension: `parameters.binary_data_size` "
            "and the `Inference-Header-Content-Length` request header)."
        ),
    )


class RequestOutput(_Model):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Model):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Which outputs to return; default: all."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "req-1",
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [1, 8, 8, 1],
                            "datatype": "FP32",
                            "data": [v for row in DIGIT for v in row],
                        }
                    ],
                    "outputs": [{"name": "probabilities"}],
                }
            ]
        },
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float | str] = Field(
        description="Row-major values, flat: numbers, or UTF-8 texts for a BYTES output "
        "(`summary`, the text a model generates)."
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="prediction_ids: one per row, for POST /feedback."
    )
    outputs: list[ResponseOutput]

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_name": "digits",
                    "model_version": "3",
                    "id": "req-1",
                    "parameters": {"prediction_ids": ["5f0c3b7e2a4d4c1f9f3a1d2e3c4b5a69"]},
                    "outputs": [
                        {
                            "name": "probabilities",
                            "shape": [1, 10],
                            "datatype": "FP32",
                            "data": [0.982, *([0.002] * 9)],
                        }
                    ],
                },
                {
                    "model_name": "aclsum",
                    "model_version": "1",
                    "id": "req-2",
                    "parameters": {"prediction_ids": ["9a1e2b3c4d5e6f708192a3b4c5d6e7f8"]},
                    "outputs": [
                        {
                            "name": "summary",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [DOCUMENT_SUMMARY],
                        }
                    ],
                },
            ]
        },
    )
