"""Summarisation, torch-free half: a document in, generated text out.

The model is a Hugging Face seq2seq model (``training.py``), exported as an encoder and a
decoder graph (``onnx_export.py``) that a numpy decoding loop runs on ONNX Runtime
(``generate.py``); the corpus is ACLSum from the ``aclsum`` wheel (``corpus.py``); the
metrics are ROUGE-1/2/L beside the lead-3 baseline (``metrics.py``).

A summarize snapshot is a text snapshot (``DataKind.TEXT``: a ``text`` column) whose
target is a string per row, the reference summary — :attr:`OutputKind.TEXT`. Its model
package holds the three graphs and ``generation.json`` instead of one ``model.onnx``; the
server runs them as one session (``session.GenerationSession``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shipyard.tasks.base import DataKind, OutputKind, Task
from shipyard.tasks.text import TextTask, texts_of
from shipyard.tasks.text.tokenizer import TextTokenizer


class SummarizeTask(Task):
    """Documents in, summaries out, through a seq2seq model decoded on ONNX Runtime."""

    name: ClassVar[str] = "summarize"
    data_kind: ClassVar[DataKind] = DataKind.TEXT
    model_families: ClassVar[tuple[str, ...]] = ("encoder_decoder", "seq2seq")
    output_kinds: ClassVar[tuple[OutputKind, ...]] = (OutputKind.TEXT,)
    #: the drift monitor compares the encoder's mean-pooled states (computed by the decoding
    #: session from the encoder graph's output, so no extra graph output is needed)
    exports_embedding: ClassVar[bool] = True
    input_name: ClassVar[str] = "input_ids"
    input_dtype: ClassVar[str] = "int64"
    dynamic_axes: ClassVar[tuple[int, ...]] = (0, 1)

    def model_input(self, features: Any, schema: dict[str, Any]) -> np.ndarray:
        """Token ids (rows, longest) of the documents, by the package's ``tokenizer.json``
        (``schema["tokenizer"]``), truncated at the encoder's length."""
        path = schema.get("tokenizer")
        if not path:
            raise ValueError(
                "summarize model input needs a tokenizer: schema['tokenizer'] must name a "
                "tokenizer.json"
            )
        return TextTokenizer.from_file(path).encode(texts_of(features)).ids

    def training(self) -> Any:
        """The training half (``half.py``: the model code lives in ``training.py``)."""
        from shipyard.tasks.summarize.half import TRAINING

        return TRAINING

    def monitor_features(self, features: Any) -> Any:
        """The text task's statistics (length, words, shares of upper case, digits,
        non-ASCII and punctuation): documents drift in the same ways messages do."""
        return TextTask().monitor_features(features)
