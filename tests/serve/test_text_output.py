"""Generated text on the serving side, without a model: the padding cut, the V2 BYTES
output, and log frames of requests whose summaries differ in length, through the real
recorder frames and the writer's row builder."""

from __future__ import annotations

import io

import numpy as np

from shipyard.serve.http import output_tensor, trim_padding
from shipyard.serve.logwriter import RowBuilder, read_frame
from shipyard.serve.recorder import Answered, frames
from shipyard.serve.schemas import InferResponse, PredictResponse


def test_trailing_padding_is_cut_to_the_requests_longest_row() -> None:
    pad = 0
    batch = np.array([[101, 5, 102, 0, 0, 0], [101, 7, 8, 9, 102, 0]])
    assert trim_padding(batch, pad).tolist() == [[101, 5, 102, 0, 0], [101, 7, 8, 9, 102]]
    assert trim_padding(batch[:1], pad).tolist() == [[101, 5, 102]]
    assert trim_padding(np.zeros((2, 4), dtype=np.int64), pad).shape == (2, 1)
    inner = np.array([[101, 0, 7, 0]])  # a generated pad id inside a row stays
    assert trim_padding(inner, pad).tolist() == [[101, 0, 7]]
    assert trim_padding(batch, None) is batch


def test_texts_are_a_bytes_output_and_numbers_stay_flat() -> None:
    texts = output_tensor("summary", np.array(["a summary", "é, ünïcode"], dtype=np.str_))
    assert texts == {
        "name": "summary",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["a summary", "é, ünïcode"],
    }
    ids = output_tensor("sequences", np.array([[1, 2], [3, 4]], dtype=np.int64))
    assert (ids["datatype"], ids["shape"], ids["data"].tolist()) == ("INT64", [2, 2], [1, 2, 3, 4])
    body = {"model_name": "m", "outputs": [texts, {**ids, "data": ids["data"].tolist()}]}
    assert InferResponse.model_validate(body).outputs[0].data == ["a summary", "é, ünïcode"]
    PredictResponse.model_validate(
        {"predictions": [{"id": "x", "summary": "text"}], "model": {"name": "m", "version": "1"}}
    )


def answered(ids: list[str], texts: list[str], summaries: list[str]) -> Answered:
    return Answered(
        ids=ids,
        model_name="aclsum",
        model_version="1",
        task="summarize",
        labels=None,
        columns=None,
        features=np.zeros((len(ids), 0), dtype=np.float32),
        raw=texts,
        outputs={
            "summary": np.array(summaries, dtype=np.str_),
            "embedding": np.ones((len(ids), 4), dtype=np.float32),
        },
        latency_ms=3.0,
        created_at=1_700_000_000.0,
    )


def test_summaries_of_different_lengths_share_a_frame_and_become_rows() -> None:
    items = [
        answered(["a", "b"], ["First document.", "Second one."], ["short", ""]),
        answered(["c"], ["Third document, longer."], ["a much longer generated summary"]),
    ]
    [frame] = frames(items)
    header, arrays = read_frame(io.BytesIO(frame))  # type: ignore[misc]
    rows = RowBuilder().rows(header, arrays)
    assert [r.id for r in rows] == ["a", "b", "c"]
    assert [r.output for r in rows] == [
        {"summary": "short"},
        {"summary": ""},
        {"summary": "a much longer generated summary"},
    ]
    assert [r.input for r in rows] == ["First document.", "Second one.", "Third document, longer."]
    assert all(r.probabilities is None and r.embedding is not None for r in rows)
    assert rows[2].monitor_features is not None
    assert rows[2].monitor_features["characters"] == len("Third document, longer.")
