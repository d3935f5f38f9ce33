"""Realistic traffic for a running server: its model, the rows that fit it, the bodies.

Traffic is built from the *test split of the snapshot the model was trained on*, shifted
by one of the monitor's scenarios (:mod:`shipyard.monitor.scenarios`), so that what the
simulator and the load test send is what the model would meet in production — and what
the drift monitor compares with that snapshot's reference. The served model is asked, not
assumed: ``/v2/health/ready`` names it (``X-Model-Name``), ``/v2/models/{name}`` gives its
input shape, columns and labels, and :func:`check_fits` refuses data that would only make
4xx answers, in one line, before any load is sent.

Shared by ``shipyard simulate`` (httpx), the Locust users (gevent) and ``shipyard
loadtest``; torch-free.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from shipyard.data.snapshot import Snapshot
from shipyard.errors import UserError
from shipyard.tasks.base import DataKind

#: the multipart boundary of upload bodies (any token absent from PNG bytes' framing works)
BOUNDARY = "shipyard-load-boundary-7c1f"
JSON_HEADERS = {"Content-Type": "application/json"}
UPLOAD_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


# -- the server and its model -------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """``http(s)://host[:port]`` without a trailing slash, or a one-line error."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--url {url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:8000")
    return url.strip().rstrip("/")


def is_loopback(url: str) -> bool:
    """True when every address the URL's host resolves to is a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@dataclass(frozen=True)
class ServedModel:
    """What the server at ``url`` serves, from its V2 metadata."""

    url: str
    name: str
    version: str
    task: str | None
    output_kind: str
    input_name: str
    #: per instance: (height, width, channels) for images, (columns,) for tables
    input_shape: tuple[int, ...]
    columns: tuple[str, ...]
    labels: tuple[str, ...]

    #: the V2 datatype of the input: BYTES for text models (the server tokenises)
    datatype: str = "FP32"

    @property
    def kind(self) -> DataKind:
        if self.datatype == "BYTES":
            return DataKind.TEXT
        return DataKind.TABLE if self.columns else DataKind.IMAGE

    def describe(self) -> str:
        return f"{self.name} v{self.version}"


def probe(url: str, timeout_s: float = 5.0) -> ServedModel:
    """Ask the server what it serves; a one-line :class:`UserError` when it cannot say."""
    import httpx

    url = normalize_url(url)
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            ready = client.get("/v2/health/ready")
            name = ready.headers.get("x-model-name")
            if ready.status_code != 200 or not name:
                state = "not ready" if ready.status_code == 503 else "not a Shipyard server"
                raise UserError(
                    f"the server at {url} is {state} (GET /v2/health/ready answered "
                    f"{ready.status_code}); expected `shipyard serve` with a loaded model"
                )
            response = client.get(f"/v2/models/{name}")
            if response.status_code != 200:
                raise UserError(
                    f"the server at {url} answered {response.status_code} to GET "
                    f"/v2/models/{name}: {response.text[:200]}"
                )
            meta = response.json()
    except httpx.HTTPError as exc:
        raise UserError(
            f"cannot reach a Shipyard server at {url} ({type(exc).__name__}: {exc}); start one "
            "with `shipyard serve digits@champion` or check --url"
        ) from None
    params = meta.get("parameters") or {}
    spec = meta["inputs"][0]
    return ServedModel(
        url=url,
        name=str(meta["name"]),
        version=str((meta.get("versions") or ["?"])[0]),
        task=params.get("task"),
        output_kind=str(params.get("output_kind", "classes")),
        input_name=str(spec["name"]),
        input_shape=tuple(int(d) for d in spec["shape"][1:]),
        columns=tuple(params.get("columns") or ()),
        labels=tuple(str(label) for label in params.get("labels") or ()),
        datatype=str(spec.get("datatype", "FP32")),
    )


def check_fits(model: ServedModel, snapshot: Snapshot) -> None:
    """Refuse a snapshot whose rows the model cannot take, or whose labels it does not know."""
    features = snapshot.manifest["schema"]["features"]
    where = f"the server's model {model.describe()}"
    fix = "pass the snapshot it was trained on (--snapshot ID, or task=... overrides)"
    if snapshot.kind is DataKind.TEXT or model.kind is DataKind.TEXT:
        if snapshot.kind is not model.kind:
            holds = "texts" if snapshot.kind is DataKind.TEXT else f"{snapshot.kind.value} rows"
            raise UserError(
                f"{where} takes {_takes(model)} but snapshot {snapshot.id} holds {holds}: {fix}"
            )
    elif snapshot.kind is DataKind.IMAGE:
        shape = (int(features["height"]), int(features["width"]), int(features["channels"]))
        if model.kind is not DataKind.IMAGE or model.input_shape != shape:
            takes = _takes(model)
            raise UserError(
                f"{where} takes {takes} but snapshot {snapshot.id} holds images "
                f"{list(shape)}: {fix}"
            )
    else:
        columns = [c["name"] for c in features["columns"]]
        if model.kind is not DataKind.TABLE or set(columns) != set(model.columns):
            raise UserError(
                f"{where} takes {_takes(model)} but snapshot {snapshot.id} holds table rows "
                f"with {len(columns)} columns ({_few(columns)}): {fix}"
            )
    known = set(model.labels)
    labels = snapshot.labels or []
    if model.output_kind == "classes" and known and not set(labels) <= known:
        unknown = sorted(set(labels) - known)
        raise UserError(
            f"{where} does not know the labels {_few(unknown)} of snapshot {snapshot.id} "
            f"(it predicts {_few(sorted(known))}): {fix}"
        )


def _takes(model: ServedModel) -> str:
    if model.kind is DataKind.TEXT:
        return "texts"
    if model.kind is DataKind.TABLE:
        return f"table rows with {len(model.columns)} columns ({_few(model.columns)})"
    return f"images {list(model.input_shape)}"


def _few(names: Any, limit: int = 4) -> str:
    names = list(names)
    return ", ".join(map(str, names[:limit])) + (", ..." if len(names) > limit else "")


def find_snapshot(
    model: ServedModel, overrides: list[str] | None = None, snapshot_id: str | None = None
) -> Snapshot:
    """The snapshot to draw from: ``snapshot_id`` in the configured store, else the one
    ``resolve_snapshot`` gives for the composed config — with ``task=`` taken from the
    server's model when the overrides do not name one (a wine server gets wine rows)."""
    from shipyard.config import compose
    from shipyard.data.snapshot import SnapshotStore
    from shipyard.train.run import resolve_snapshot

    overrides = list(overrides or [])
    if model.task and not any(o.lstrip("+~").startswith("task=") for o in overrides):
        overrides.insert(0, f"task={model.task}")
    cfg = compose(overrides)
    if snapshot_id:
        snapshot = SnapshotStore(str(cfg.paths.snapshots)).get(snapshot_id)
    else:
        snapshot = resolve_snapshot(cfg)
    check_fits(model, snapshot)
    return snapshot


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """``count`` instances drawn from a test split and shifted by a scenario.

    ``features``: images as an array (rows, height, width, channels), 0..255; tables as a
    DataFrame in the snapshot's columns (NaN: missing). ``labels``: the true label text of
    each row (classes), the true value (numbers) or the reference text (a model that
    generates text, e.g. the true summary) — what ``/feedback`` sends.
    """

    kind: DataKind
    features: Any
    labels: list[str | float]
    snapshot_id: str
    scenario: str

    def __len__(self) -> int:
        return len(self.labels)


def draw_rows(
    snapshot: Snapshot,
    scenario: str,
    count: int,
    *,
    seed: int = 0,
    strength: float = 1.0,
) -> Rows:
    """``count`` rows of the test split (shuffled, cycled when more are needed), shifted.

    The scenario sees the drawn rows (so noise differs between repeats of a row); if it
    changes how many there are (a label shift resamples), the result is drawn to
    ``count`` again from what it returned.
    """
    from shipyard.monitor.scenarios import apply_scenario, check_scenario

    check_scenario(scenario)
    rng = np.random.default_rng(seed)
    split = snapshot.load("test")
    if len(split) == 0:
        raise UserError(f"snapshot {snapshot.id} has an empty test split: nothing to send")
    index = _cycle(rng, len(split), count)
    features = _take(split.features, index)
    target = np.asarray(split.target)[index]
    features, target = apply_scenario(
        scenario, features, target, kind=snapshot.kind, rng=rng, strength=strength
    )
    if len(target) != count:
        again = _cycle(rng, len(target), count)
        features, target = _take(features, again), np.asarray(target)[again]
    if snapshot.kind is DataKind.IMAGE:
        features = np.clip(np.asarray(features), 0, 255)
    labels = _label_texts(snapshot, np.asarray(target))
    return Rows(snapshot.kind, features, labels, snapshot.id, scenario)


def _cycle(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Shuffled passes over ``range(size)``: every row used before any repeats."""
    passes = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]


def _take(features: Any, index: np.ndarray) -> Any:
    if isinstance(features, np.ndarray):
        return features[index]
    return features.iloc[index].reset_index(drop=True)


def _label_texts(snapshot: Snapshot, target: np.ndarray) -> list[str | float]:
    labels = snapshot.labels
    if labels:
        return [labels[int(i)] for i in target.tolist()]
    if target.dtype.kind in "OUS":  # generated text (summaries): the reference text itself
        return [str(v) for v in target.tolist()]
    return [float(v) for v in target.astype(np.float64).tolist()]


# -- request bodies -----------------------------------------------------------------------------


def instances(rows: Rows, start: int, stop: int) -> list[Any]:
    """JSON-ready ``/predict`` instances: ``[h][w]`` (or ``[h][w][c]``) pixels,
    ``{column: number or null}``, or texts."""
    if rows.kind is DataKind.IMAGE:
        images = _compact(rows.features[start:stop])
        if images.shape[-1] == 1:
            images = images[..., 0]
        out: list[Any] = images.tolist()
        return out
    frame = rows.features.iloc[start:stop]
    if rows.kind is DataKind.TEXT:
        return [str(text) for text in frame["text"].tolist()]
    return [
        {str(k): (None if v != v else float(v)) for k, v in record.items()}  # NaN: missing
        for record in frame.to_dict("records")
    ]


def predict_body(rows: Rows, start: int, stop: int) -> bytes:
    return json.dumps({"instances": instances(rows, start, stop)}).encode()


def infer_body(rows: Rows, start: int, stop: int, model: ServedModel) -> bytes:
    """An Open Inference Protocol request: one FP32 tensor (in the model's column order), or
    one BYTES tensor of texts."""
    if rows.kind is DataKind.TEXT:
        texts = instances(rows, start, stop)
        tensor = {
            "name": model.input_name,
            "shape": [len(texts)],
            "datatype": "BYTES",
            "data": texts,
        }
        return json.dumps({"inputs": [tensor]}).encode()
    if rows.kind is DataKind.IMAGE:
        array = _compact(rows.features[start:stop])
        data: list[Any] = array.ravel().tolist()
        shape = list(array.shape)
    else:
        frame = rows.features.iloc[start:stop][list(model.columns)]
        values = frame.to_numpy(dtype=np.float64)
        data = [None if v != v else v for v in values.ravel().tolist()]
        shape = list(values.shape)
    tensor = {"name": model.input_name, "shape": shape, "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def upload_body(rows: Rows, start: int, stop: int) -> bytes:
    """A multipart form with one PNG per image (boundary :data:`BOUNDARY`)."""
    from PIL import Image

    parts: list[bytes] = []
    for i, image in enumerate(rows.features[start:stop]):
        pixels = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode).save(buffer, "PNG")
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="row{start + i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + buffer.getvalue()
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def feedback_body(prediction_id: str, label: str | float) -> bytes:
    return json.dumps({"prediction_id": prediction_id, "label": label}).encode()


def _compact(images: np.ndarray) -> np.ndarray:
    """Whole numbers stay integers in JSON (``128``, not ``128.0``): a third of the bytes."""
    if np.issubdtype(images.dtype, np.integer):
        return images
    if np.all(images == np.rint(images)):
        return images.astype(np.int64)
    return np.round(images.astype(np.float64), 2)
