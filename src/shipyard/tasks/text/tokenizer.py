"""Text to token ids without torch: the ``tokenizers`` library on a ``tokenizer.json``.

The model package carries the tokenizer as ``tokenizer.json`` (plain JSON, Hugging Face's
own format) with its truncation (``max_length``) and padding (pad to the longest text of
a batch, with the pad id) written into the file itself, so every reader — the server, the
export's scoring, the promotion gate, the drift monitor — tokenises exactly as training
did by loading one file. Training tokenises with ``transformers.AutoTokenizer``; a test
proves both give the same ids on the whole test split of the bundled corpus.

Why not the tokenizer inside the ONNX graph (onnxruntime-extensions)? Measured in
docs/architecture.md ("Text"): the ``tokenizers`` wheel is small, already what
Hugging Face's fast tokenizers run, and the graph stays a plain ONNX file that any ONNX
Runtime opens; the extensions' custom-op library would be a second native dependency of
the server for a step that costs tens of microseconds per text.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the tokenizer's file name inside a model package
TOKENIZER_FILE = "tokenizer.json"

_CACHE: dict[tuple[str, int], TextTokenizer] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Encoded:
    """A batch of texts as the graph's input."""

    #: (rows, longest) int64 token ids, padded with ``pad_id`` to the longest text
    ids: np.ndarray
    #: tokens per text, special tokens included (after truncation)
    lengths: np.ndarray
    #: per text: whether it had more tokens than ``max_length`` (and was truncated)
    truncated: np.ndarray
    #: per text: its token count before truncation (>= lengths)
    full_lengths: np.ndarray


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with truncation at ``max_length`` and batch-longest padding."""

    def __init__(self, tokenizer: Any) -> None:
        truncation = tokenizer.truncation
        padding = tokenizer.padding
        if not truncation or not padding:
            raise ValueError(
                "the tokenizer must have truncation and padding configured (a Shipyard "
                "package's tokenizer.json has both): re-export the model"
            )
        self.tokenizer = tokenizer
        self.max_length = int(truncation["max_length"])
        self.pad_id = int(padding["pad_id"])

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        """The tokenizer in ``path``; cached per file and modification time (the server,
        the monitor and scoring load the same package's file many times)."""
        from tokenizers import Tokenizer

        file = Path(path)
        key = (str(file.resolve()), file.stat().st_mtime_ns)
        with _LOCK:
            cached = _CACHE.get(key)
            if cached is None:
                cached = _CACHE[key] = cls(Tokenizer.from_file(str(file)))
        return cached

    @classmethod
    def configured(cls, tokenizer_json: str, max_length: int, pad_id: int, pad_token: str) -> str:
        """A tokenizer's JSON with Shipyard's settings written in: truncation at
        ``max_length`` tokens (special tokens included) and padding to the longest text of
        a batch with ``pad_id``. This is the file the package carries."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        text: str = tokenizer.to_str()
        return text

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Token ids of ``texts``, truncated at ``max_length`` and padded to the longest.

        ``encode_batch`` runs in the library's Rust thread pool and releases the GIL.
        """
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
        lengths = np.array([sum(e.attention_mask) for e in encodings], dtype=np.int64)
        # Overflowing pieces hold the tokens cut off (stride 0): their count, less the
        # special tokens each piece repeats, is what truncation dropped.
        full = np.array(
            [
                length + sum(_content_tokens(o) for o in e.overflowing)
                for length, e in zip(lengths.tolist(), encodings, strict=True)
            ],
            dtype=np.int64,
        )
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        return Encoded(ids=ids, lengths=lengths, truncated=truncated, full_lengths=full)


def _content_tokens(encoding: Any) -> int:
    """Tokens of an overflowing piece that are text, not special tokens or padding."""
    return int(
        sum(
            1
            for special, mask in zip(
                encoding.special_tokens_mask, encoding.attention_mask, strict=True
            )
            if mask and not special
        )
    )


def pad_rows(parts: Sequence[np.ndarray], pad_id: int) -> np.ndarray:
    """Token-id batches of different lengths joined into one, padded to the longest with
    ``pad_id``: what lets requests of different lengths share one ONNX Runtime call (the
    graph masks the padding, so a text's answer does not depend on its neighbours)."""
    longest = max(part.shape[1] for part in parts)
    rows = sum(len(part) for part in parts)
    joined = np.full((rows, longest), pad_id, dtype=np.int64)
    offset = 0
    for part in parts:
        joined[offset : offset + len(part), : part.shape[1]] = part
        offset += len(part)
    return joined
