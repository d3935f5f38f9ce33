"""Every bad input gets its 4xx and a one-line message that says what was expected.

The app runs in-process (FastAPI's TestClient, lifespan included: the real package, ONNX
Runtime, batcher and prediction log) because there are many cases; the main paths run
against a real uvicorn server in ``test_app_server.py``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from shipyard.serve import schemas
from shipyard.serve.app import create_app
from shipyard.serve.runtime import ServedModel
from shipyard.serve.settings import ServeSettings

LIMITS = {
    "max_instances": 8,
    "max_body_bytes": 64 * 1024,
    "max_image_pixels": 100 * 100,
    "max_upload_files": 4,
}


def make_client(package: Any, tmp: Path, **extra: Any) -> TestClient:
    settings = ServeSettings(
        package=str(package.path),
        home=str(tmp),
        prediction_log_url=f"sqlite:///{tmp}/predictions.db",
        **{**LIMITS, **extra},
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def digits_client(packages: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(packages.digits, tmp_path_factory.mktemp("digits-app")) as client:
        yield client


@pytest.fixture(scope="module")
def wine_client(packages: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(packages.wine, tmp_path_factory.mktemp("wine-app")) as client:
        yield client


def assert_refused(response: Any, status: int, kind: str, *needles: str) -> str:
    """The status, the kind, one line that contains every needle, and the model headers."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["kind"] == kind, body
    message = body["error"]
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert response.headers["x-model-name"]
    assert response.headers["x-model-version"]
    return str(message)


GOOD = [[0] * 8 for _ in range(8)]
SHORT = [[0] * 7 for _ in range(8)]
EXPECTED = "expected [8, 8] (height, width) of numbers 0..255"

DIGITS_JSON_CASES = {
    "wrong shape": (
        {"instances": [GOOD, GOOD, GOOD, SHORT]},
        422,
        "bad_shape",
        ["instance 3 has shape [8, 7], " + EXPECTED],
    ),
    "flat list": ({"instance": [0] * 64}, 422, "bad_shape", ["shape [64]", EXPECTED]),
    "ragged rows": (
        {"instances": [[[0] * 8] * 7 + [[0] * 5]]},
        422,
        "bad_shape",
        ["instance 0 is ragged"],
    ),
    "text pixels": (
        {"instances": [GOOD, [["a"] * 8] * 8]},
        422,
        "bad_type",
        ["instance 1 holds", EXPECTED],
    ),
    "null pixels": ({"instances": [[[None] * 8] * 8]}, 422, "bad_type", ["instance 0 holds"]),
    "boolean pixels": (
        {"instances": [[[True] * 8] * 8]},
        422,
        "bad_type",
        ["true/false"],
    ),
    "over 255": (
        {"instances": [GOOD, [[300] * 8] * 8]},
        422,
        "out_of_range",
        ["instance 1 has values from 300 to 300", EXPECTED],
    ),
    "negative": ({"instances": [[[-1] * 8] * 8]}, 422, "out_of_range", ["from -1"]),
    "empty": ({"instances": []}, 422, "empty", ["instances is empty; expected 1 to 8"]),
    "too many": ({"instances": [GOOD] * 9}, 413, "too_many", ["9 instances", "at most 8"]),
    "not an object": ([GOOD], 422, "bad_type", ["JSON list", '{"instances"']),
    "unknown field": (
        {"instances": [GOOD], "inputs": 1},
        422,
        "bad_type",
        ["unknown field 'inputs'"],
    ),
    "no instances": ({}, 422, "bad_type", ['no "instances"']),
    "both": ({"instances": [GOOD], "instance": GOOD}, 422, "bad_type", ["not both"]),
    "instances not a list": ({"instances": 5}, 422, "bad_type", ["a JSON number"]),
    "instance a string": ({"instance": "x"}, 422, "bad_type", ["JSON string", EXPECTED]),
}


@pytest.mark.parametrize("case", DIGITS_JSON_CASES, ids=str)
def test_bad_image_json_is_a_4xx_that_says_what_was_expected(
    digits_client: TestClient, case: str
) -> None:
    payload, status, kind, needles = DIGITS_JSON_CASES[case]
    response = digits_client.post("/predict", json=payload)
    assert_refused(response, status, kind, *needles)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "kind", "needle"),
    [
        (b'{"instances": [[[NaN]]]}', "application/json", 400, "bad_json", "NaN and Infinity"),
        (b'{"instances": [[[1e999]]]}', "application/json", 400, "bad_json", "not valid JSON"),
        (b"instances=1", "application/json", 400, "bad_json", "not valid JSON"),
        (b"", "application/json", 422, "bad_json", "empty"),
        (b'{"instances": []}', "text/plain", 415, "unsupported_media_type", "application/json"),
        (b'{"instances": []}', "", 415, "unsupported_media_type", "missing"),
    ],
    ids=["NaN", "infinity", "not JSON", "empty body", "text/plain", "no content type"],
)
def test_bad_bodies_and_content_types(
    digits_client: TestClient,
    body: bytes,
    content_type: str,
    status: int,
    kind: str,
    needle: str,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = digits_client.post("/predict", content=body, headers=headers)
    assert_refused(response, status, kind, needle)


def test_body_over_the_limit_is_refused_before_parsing(digits_client: TestClient) -> None:
    big = b'{"instances": [' + b"0," * 40_000 + b"0]}"
    declared = digits_client.post(
        "/predict", content=big, headers={"content-type": "application/json"}
    )
    assert_refused(declared, 413, "too_large", "at most 65,536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 8192

    streamed = digits_client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert_refused(streamed, 413, "too_large", "serve.max_body_bytes")


def test_mixed_grey_instance_shapes_are_accepted(digits_client: TestClient) -> None:
    """[8, 8] and [8, 8, 1] mean the same grey image; a batch may mix them."""
    response = digits_client.post("/predict", json={"instances": [GOOD, [[[0]] * 8] * 8]})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["probabilities"] == pytest.approx(second["probabilities"])


# -- uploads -------------------------------------------------------------------------------------


def image_bytes(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=128 if mode == "L" else (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


def test_upload_converts_and_resizes_to_the_model_input(digits_client: TestClient) -> None:
    """A 40x30 RGB JPEG becomes an 8x8 grey image: accepted, one prediction."""
    response = digits_client.post(
        "/predict/upload", files={"file": ("photo.jpg", image_bytes(40, 30, "JPEG"), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("files", "body", "content_type", "status", "kind", "needle"),
    [
        (
            {"file": ("notes.png", b"this is not an image at all", "image/png")},
            None,
            None,
            415,
            "not_an_image",
            "file 'notes.png' is not an image",
        ),
        (
            {"file": ("big.png", image_bytes(200, 200, mode="L"), "image/png")},
            None,
            None,
            413,
            "image_too_large",
            "200x200 = 40,000 pixels; at most 10,000",
        ),
        (
            {"file": ("cut.png", image_bytes(50, 50)[:60], "image/png")},
            None,
            None,
            422,
            "bad_image",
            "damaged or truncated",
        ),
        (None, b"GIF89a-not-really", "image/gif", 415, "not_an_image", "file 'body'"),
        (None, b"{}", "application/json", 415, "unsupported_media_type", "multipart/form-data"),
        (
            {"file": ("empty.png", b"", "image/png")},
            None,
            None,
            422,
            "empty",
            "file 'empty.png' is empty",
        ),
    ],
    ids=["not an image", "pixel bomb", "truncated", "raw garbage", "json", "empty file"],
)
def test_bad_uploads(
    digits_client: TestClient,
    files: dict[str, Any] | None,
    body: bytes | None,
    content_type: str | None,
    status: int,
    kind: str,
    needle: str,
) -> None:
    if files is not None:
        response = digits_client.post("/predict/upload", files=files)
    else:
        response = digits_client.post(
            "/predict/upload", content=body, headers={"content-type": str(content_type)}
        )
    assert_refused(response, status, kind, needle)


def test_upload_form_without_a_file_and_too_many_files(digits_client: TestClient) -> None:
    boundary = "b0undary"
    text_only = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    no_file = digits_client.post(
        "/predict/upload",
        content=text_only,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_refused(no_file, 422, "empty", "the form holds no file")
    broken = digits_client.post(
        "/predict/upload", content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert_refused(broken, 400, "bad_multipart", "cannot be read")
    png = image_bytes(8, 8, mode="L")
    many = [("file", (f"{i}.png", png, "image/png")) for i in range(5)]
    response = digits_client.post("/predict/upload", files=many)
    assert_refused(response, 413, "too_many", "5 files in one request; at most 4")


# -- the Open Inference Protocol ------------------------------------------------------------------


def infer(data: Any, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data, **extra}]
    }


V2_CASES = {
    "wrong shape": (
        infer([0] * 64, [1, 8, 8]),
        422,
        "bad_shape",
        ["shape [1, 8, 8]", "[-1, 8, 8, 1]"],
    ),
    "data count": (infer([0] * 63, [1, 8, 8, 1]), 422, "bad_shape", ["63 values", "needs 64"]),
    "datatype": (
        {
            "inputs": [
                {"name": "features", "shape": [1, 8, 8, 1], "datatype": "BYTES", "data": ["a"]}
            ]
        },
        422,
        "bad_type",
        ["'BYTES' is not supported", "FP32"],
    ),
    "input name": (
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0] * 64}
            ]
        },
        422,
        "bad_input_name",
        ["'pixels'", "'features'"],
    ),
    "text data": (
        infer(["x"] * 64, [1, 8, 8, 1]),
        422,
        "bad_type",
        ["not a (flat or nested) list of numbers"],
    ),
    "out of range": (infer([999] * 64, [1, 8, 8, 1]), 422, "out_of_range", ["0..255"]),
    "no inputs": ({"inputs": []}, 422, "bad_type", ["inputs"]),
    "missing shape": (
        {"inputs": [{"name": "features", "datatype": "FP32", "data": [0] * 64}]},
        422,
        "bad_type",
        ["inputs.0.shape"],
    ),
    "unknown output": (
        {**infer([0] * 64, [1, 8, 8, 1]), "outputs": [{"name": "logits"}]},
        422,
        "bad_output_name",
        ["'logits'", "'probabilities'"],
    ),
    "too many rows": (infer([0] * 64 * 9, [9, 8, 8, 1]), 413, "too_many", ["at most 8"]),
}


@pytest.mark.parametrize("case", V2_CASES, ids=str)
def test_bad_v2_requests(digits_client: TestClient, case: str) -> None:
    payload, status, kind, needles = V2_CASES[case]
    response = digits_client.post("/v2/models/digits/infer", json=payload)
    assert_refused(response, status, kind, *needles)


def test_v2_unknown_model_and_version_are_404(digits_client: TestClient) -> None:
    assert_refused(digits_client.get("/v2/models/cats"), 404, "unknown_model", "'cats'", "'digits'")
    assert_refused(
        digits_client.post("/v2/models/cats/infer", json=infer([0] * 64, [1, 8, 8, 1])),
        404,
        "unknown_model",
    )
    assert_refused(
        digits_client.post(
            "/v2/models/digits/versions/99/infer", json=infer([0] * 64, [1, 8, 8, 1])
        ),
        404,
        "unknown_model",
        "no version '99'",
    )


def test_v2_nested_data_equals_flat_data(digits_client: TestClient, packages: Any) -> None:
    image = packages.digits_test[:2].astype(float)
    flat = digits_client.post(
        "/v2/models/digits/infer", json=infer(image.ravel().tolist(), [2, 8, 8, 1])
    )
    nested = digits_client.post("/v2/models/digits/infer", json=infer(image.tolist(), [2, 8, 8, 1]))
    assert flat.status_code == nested.status_code == 200, flat.text + nested.text
    assert flat.json()["outputs"][0]["data"] == nested.json()["outputs"][0]["data"]
    schemas.InferResponse.model_validate(flat.json())


def binary_infer(
    pixels: np.ndarray, datatype: str = "UINT8", *, size: Any = None, header: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A V2 request in the binary data extension: JSON header, then the raw tensor bytes."""
    data = pixels.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(pixels.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data) if size is None else size},
                }
            ]
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": header if header is not None else str(len(head)),
    }
    return head + data, headers


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_v2_binary_data_equals_json_data(
    digits_client: TestClient, packages: Any, datatype: str
) -> None:
    """The same images as raw bytes after a JSON header (KServe/Triton binary data extension)
    give exactly the JSON request's outputs."""
    images = packages.digits_test[:3]
    as_json = digits_client.post(
        "/v2/models/digits/infer", json=infer(images.astype(float).ravel().tolist(), [3, 8, 8, 1])
    )
    pixels = images.astype(np.uint8 if datatype == "UINT8" else np.float32)
    body, headers = binary_infer(pixels, datatype)
    as_bytes = digits_client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert as_json.status_code == as_bytes.status_code == 200, as_bytes.text
    assert as_json.json()["outputs"] == as_bytes.json()["outputs"]
    assert len(as_bytes.json()["parameters"]["prediction_ids"]) == 3


def test_bad_v2_binary_requests(digits_client: TestClient, packages: Any) -> None:
    pixels = packages.digits_test[:1].astype(np.uint8)
    url = "/v2/models/digits/infer"

    body, headers = binary_infer(pixels, size=10)
    assert_refused(digits_client.post(url, content=body, headers=headers), 422, "bad_shape", "10")
    body, headers = binary_infer(pixels, header="nope")
    refused = digits_client.post(url, content=body, headers=headers)
    assert_refused(refused, 422, "bad_header_length", "Inference-Header-Content-Length")
    body, headers = binary_infer(pixels[:, :4], size=32)  # 8x4 pixels for an 8x8 model
    assert_refused(
        digits_client.post(url, content=body, headers=headers), 422, "bad_shape", "shape"
    )
    body, headers = binary_infer(pixels.astype(np.float32) * 300, "FP32")
    assert_refused(
        digits_client.post(url, content=body, headers=headers), 422, "out_of_range", "0..255"
    )
    no_header = digits_client.post(url, json={**infer([0] * 64, [1, 8, 8, 1]), "inputs": [
        {"name": "features", "shape": [1, 8, 8, 1], "datatype": "UINT8",
         "parameters": {"binary_data_size": 64}}]})  # fmt: skip
    assert_refused(no_header, 422, "bad_header_length", "no Inference-Header-Content-Length")
    no_data = {"inputs": [{"name": "features", "shape": [1, 8, 8, 1], "datatype": "UINT8"}]}
    assert_refused(digits_client.post(url, json=no_data), 422, "missing_data", "no data")


# -- tables ---------------------------------------------------------------------------------------


def test_table_rows_as_objects_or_lists_with_null_match_the_model(
    wine_client: TestClient, packages: Any, wine_rows: Callable[[pd.DataFrame], list[Any]]
) -> None:
    frame = packages.wine_test.head(6).copy()
    frame.iloc[0, 2] = np.nan  # a missing value: the graph fills it with the training mean
    rows = wine_rows(frame)
    assert rows[0][frame.columns[2]] is None
    as_lists = [list(row.values()) for row in rows]
    by_object = wine_client.post("/predict", json={"instances": rows})
    by_list = wine_client.post("/predict", json={"instances": as_lists})
    assert by_object.status_code == by_list.status_code == 200, by_object.text
    assert by_object.json()["predictions"][0]["probabilities"] == pytest.approx(
        by_list.json()["predictions"][0]["probabilities"]
    )
    model = ServedModel.load(packages.wine, name="wine", version="x")
    expected = model.run(frame.to_numpy(dtype=np.float32))["probabilities"]
    labels = model.manifest.labels
    assert labels is not None
    got = by_object.json()["predictions"]
    assert [p["label"] for p in got] == [labels[i] for i in expected.argmax(axis=1)]
    for prediction, probabilities in zip(got, expected, strict=True):
        assert [prediction["probabilities"][label] for label in labels] == pytest.approx(
            probabilities.tolist(), abs=1e-6
        )


def _wine_case(packages: Any) -> dict[str, tuple[Any, int, str, list[str]]]:
    columns = list(packages.wine_test.columns)
    row = dict.fromkeys(columns, 1.0)
    return {
        "unknown column": (
            {"instances": [row, {**row, "colour": 3}]},
            422,
            "bad_columns",
            ["instance 1 has unknown column colour"],
        ),
        "missing column": (
            {"instances": [{k: v for k, v in row.items() if k != columns[0]}]},
            422,
            "bad_columns",
            [f"missing column {columns[0]}"],
        ),
        "short list": ({"instances": [[1.0] * 3]}, 422, "bad_shape", ["3 values, expected 13"]),
        "text value": (
            {"instance": {**row, columns[1]: "high"}},
            422,
            "bad_type",
            [f"column {columns[1]!r} is string 'high'", "null for a missing value"],
        ),
        "boolean value": ({"instance": {**row, columns[1]: True}}, 422, "bad_type", ["boolean"]),
        "over float32": (
            {"instance": {**row, columns[1]: 1e39}},
            422,
            "not_finite",
            ["outside the float32 range"],
        ),
        "scalar instance": ({"instances": [3]}, 422, "bad_type", ["JSON number"]),
    }


WINE_CASES = [
    "unknown column",
    "missing column",
    "short list",
    "text value",
    "boolean value",
    "over float32",
    "scalar instance",
]


@pytest.mark.parametrize("case", WINE_CASES)
def test_bad_table_rows(wine_client: TestClient, packages: Any, case: str) -> None:
    payload, status, kind, needles = _wine_case(packages)[case]
    assert_refused(wine_client.post("/predict", json=payload), status, kind, *needles)


def test_upload_to_a_table_model_is_415(wine_client: TestClient) -> None:
    response = wine_client.post(
        "/predict/upload", files={"file": ("x.png", image_bytes(8, 8), "image/png")}
    )
    assert_refused(response, 415, "wrong_endpoint", "table rows")


def test_feedback_checks_the_label_and_accepts_unknown_ids(wine_client: TestClient) -> None:
    bad = wine_client.post("/feedback", json={"prediction_id": "abc", "label": "merlot"})
    assert_refused(bad, 422, "bad_label", "'merlot' is not one of the model's labels")
    missing = wine_client.post("/feedback", json={"prediction_id": "abc"})
    assert_refused(missing, 422, "bad_type", "label")
    extra = wine_client.post("/feedback", json={"prediction_id": "abc", "label": "x", "note": 1})
    assert_refused(extra, 422, "bad_type", "note")
    labels = wine_client.get("/v2/models/wine").json()["parameters"]["labels"]
    ok = wine_client.post(
        "/feedback", json={"prediction_id": "not-yet-flushed", "label": labels[0]}
    )
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"accepted": True, "prediction_id": "not-yet-flushed"}


# -- admin, errors, OpenAPI ------------------------------------------------------------------------


def test_admin_routes_are_disabled_without_a_token(digits_client: TestClient) -> None:
    for route in ("/admin/reload", "/admin/rollback"):
        response = digits_client.post(route, headers={"Authorization": "Bearer anything"})
        assert_refused(response, 403, "admin_disabled", "SHIPYARD_ADMIN_TOKEN")


def test_unknown_routes_and_methods_are_json_errors(digits_client: TestClient) -> None:
    assert_refused(digits_client.get("/nope"), 404, "not_found")
    assert_refused(digits_client.get("/predict"), 405, "method_not_allowed")


def test_openapi_documents_every_route_with_models_and_examples(digits_client: TestClient) -> None:
    spec = digits_client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/predict",
        "/predict/upload",
        "/feedback",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/infer",
        "/admin/reload",
        "/admin/rollback",
    ):
        assert path in paths, path
    components = spec["components"]["schemas"]
    for name in (
        "PredictRequest",
        "PredictResponse",
        "ErrorResponse",
        "InferRequest",
        "InferResponse",
        "FeedbackRequest",
        "ModelMetadata",
    ):
        assert name in components, name
    predict = paths["/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["examples"]["image"]["value"]
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])
    assert predict["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    # every $ref resolves
    text = str(spec)
    for ref in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert ref in components, ref


def test_predictions_never_return_nan_as_500(digits_client: TestClient) -> None:
    """Extreme but valid input: all 255 and all 0 give finite probabilities."""
    response = digits_client.post("/predict", json={"instances": [[[255] * 8] * 8, GOOD]})
    assert response.status_code == 200
    for prediction in response.json()["predictions"]:
        assert all(math.isfinite(p) for p in prediction["probabilities"].values())
