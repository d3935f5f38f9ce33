"""A summariser package as one ONNX-Runtime-like session: token ids in, summary ids and
the document embedding out.

The server, the export's latency timer, the scorer and the drift reference all drive a
model through ``session.get_inputs()``, ``session.get_outputs()`` and
``session.run(names, feed)``. :class:`GenerationSession` offers exactly that over the
three graphs and the decoding loop of :class:`~shipyard.tasks.summarize.generate.OnnxSummarizer`,
so a summariser is served, timed and checked by the same code as a classifier, with no
"is this a summariser?" in those rooms. Torch-free (numpy, onnxruntime, tokenizers).

* input ``input_ids`` (rows, tokens): the package tokenizer's ids, padded with its pad id
  (the mask is ``ids != pad``, as the classifiers' graphs compute it);
* output ``sequences`` (rows, longest): the generated ids after the start token, the end
  token included when reached, padded with the pad id;
* output ``embedding`` (rows, hidden): the encoder's states mean-pooled over the real
  tokens, which the drift monitor compares. Asking for it alone runs only the encoder.

How it decodes (beams, n-gram rule, length) is the package's ``generation.json`` ``decoding``
entry, which ``shipyard export`` writes from the model config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.tasks.summarize.generate import OnnxSummarizer

INPUT = "input_ids"
SEQUENCES = "sequences"
EMBEDDING = "embedding"
#: decoding defaults when ``generation.json`` has no ``decoding`` entry
DEFAULT_DECODING: dict[str, Any] = {
    "num_beams": 1,
    "no_repeat_ngram_size": 3,
    "length_penalty": 1.0,
    "max_length": None,
}


@dataclass(frozen=True)
class NodeArg:
    """What ONNX Runtime's ``NodeArg`` tells about an input or output."""

    name: str
    type: str
    shape: list[Any]


class GenerationSession:
    """The encoder, the decoders and the decoding loop behind one ``run``."""

    def __init__(
        self, folder: str | Path, *, intra_op_threads: int = 1, inter_op_threads: int = 1
    ) -> None:
        self.summarizer = OnnxSummarizer(
            folder, threads=intra_op_threads, inter_op_threads=inter_op_threads
        )
        spec = self.summarizer.spec
        self.decoding = DEFAULT_DECODING | dict(spec.get("decoding") or {})
        self.pad_id = self.summarizer.pad_id
        self.hidden_size = int(spec["hidden_size"])

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(INPUT, "tensor(int64)", ["batch", "sequence"])]

    def get_outputs(self) -> list[NodeArg]:
        return [
            NodeArg(SEQUENCES, "tensor(int64)", ["batch", "length"]),
            NodeArg(EMBEDDING, "tensor(float)", ["batch", self.hidden_size]),
        ]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` (all when None) for the token ids in ``feed``."""
        wanted = list(names) if names else [SEQUENCES, EMBEDDING]
        unknown = sorted(set(wanted) - {SEQUENCES, EMBEDDING})
        if unknown or set(feed) != {INPUT}:
            raise ValueError(
                f"a summariser takes {INPUT!r} and gives {SEQUENCES!r} and {EMBEDDING!r}; "
                f"asked for {unknown or wanted} from {sorted(feed)}"
            )
        ids = np.ascontiguousarray(feed[INPUT], dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"{INPUT!r} must be (rows, tokens), got shape {list(ids.shape)}")
        mask = (ids != self.pad_id).astype(np.int64)
        hidden = self.summarizer.encode_states(ids, mask)
        out: dict[str, np.ndarray] = {EMBEDDING: mean_pool(hidden, mask)}
        if SEQUENCES in wanted:
            generated = self.summarizer.decode_states(
                hidden,
                mask,
                max_length=self.decoding["max_length"],
                num_beams=int(self.decoding["num_beams"]),
                length_penalty=float(self.decoding["length_penalty"]),
                no_repeat_ngram_size=int(self.decoding["no_repeat_ngram_size"]),
            )
            out[SEQUENCES] = pad_rows(generated.ids, self.pad_id)
        return [out[name] for name in wanted]

    def decode(self, sequences: np.ndarray) -> list[str]:
        """Generated ids (``sequences``) as text: special tokens and padding dropped."""
        return self.summarizer.decode([row.tolist() for row in sequences])


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the states over the real tokens of each row, float32 (rows, hidden)."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    pooled: np.ndarray = summed / np.maximum(weights.sum(axis=1), 1.0)
    return pooled.astype(np.float32)


def pad_rows(rows: list[list[int]], pad: int) -> np.ndarray:
    """Rows of ids as one (rows, longest) int64 matrix, padded with ``pad``."""
    width = max((len(r) for r in rows), default=0)
    matrix = np.full((len(rows), max(width, 1)), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix
