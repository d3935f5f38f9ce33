"""Text classification, torch-free half: token ids from the package's tokenizer, and text
statistics for the drift monitor.

A text snapshot is a table with one string column, ``text`` (see ``DataKind.TEXT``). The
model (``training.py``) is a Hugging Face encoder, mean-pooled, with a linear head; its
graph takes int64 token ids and computes the attention mask from the pad id inside, so
the server feeds one input. Tokenisation cannot live in a plain ONNX graph, so it lives
here, in the half the server imports: :class:`~shipyard.tasks.text.tokenizer.TextTokenizer`
over the ``tokenizer.json`` that the package carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from shipyard.tasks.base import DataKind, OutputKind, Task
from shipyard.tasks.text.tokenizer import TextTokenizer

#: the snapshot's column of texts
TEXT_COLUMN = "text"


class TextTask(Task):
    """Texts in, one class out, through a Hugging Face encoder."""

    name: ClassVar[str] = "text"
    data_kind: ClassVar[DataKind] = DataKind.TEXT
    model_families: ClassVar[tuple[str, ...]] = ("transformer",)
    output_kinds: ClassVar[tuple[OutputKind, ...]] = (OutputKind.CLASSES,)
    exports_embedding: ClassVar[bool] = True
    input_name: ClassVar[str] = "input_ids"
    input_dtype: ClassVar[str] = "int64"
    dynamic_axes: ClassVar[tuple[int, ...]] = (0, 1)

    def model_input(self, features: Any, schema: dict[str, Any]) -> np.ndarray:
        """Token ids (rows, longest) of the texts, by the tokenizer at ``schema["tokenizer"]``
        (a ``tokenizer.json`` path: the package's, or the one training wrote)."""
        path = schema.get("tokenizer")
        if not path:
            raise ValueError(
                "text model input needs a tokenizer: schema['tokenizer'] must name a "
                "tokenizer.json (export.package.input_schema adds the package's)"
            )
        return TextTokenizer.from_file(path).encode(texts_of(features)).ids

    def monitor_features(self, features: Any) -> Any:
        """Characters, words, and the share of upper-case letters, digits, non-ASCII
        characters and punctuation per text.

        Cheap on live requests (no tokenizer, no model), and they move when traffic shifts
        in the ways a text service sees first: longer or shorter messages, shouting,
        numbers, another language or alphabet. The embedding (a second graph output)
        carries the meaning.
        """
        import pandas as pd

        texts = texts_of(features)
        chars = np.array([len(t) for t in texts], dtype=np.float64)
        safe = np.maximum(chars, 1.0)
        columns = {
            "characters": chars,
            "words": np.array([len(t.split()) for t in texts], dtype=np.float64),
            "upper_share": _count(texts, str.isupper) / safe,
            "digit_share": _count(texts, str.isdigit) / safe,
            "non_ascii_share": _count(texts, lambda c: not c.isascii()) / safe,
            "punctuation_share": _count(texts, _is_punctuation) / safe,
        }
        return pd.DataFrame(columns)


def texts_of(features: Any) -> list[str]:
    """The texts of a snapshot split (a table with a ``text`` column) or a list of strings."""
    if hasattr(features, "columns"):
        return [str(t) for t in features[TEXT_COLUMN].tolist()]
    if isinstance(features, str):
        return [features]
    if isinstance(features, Sequence | np.ndarray):
        return [str(t) for t in features]
    return [str(t) for t in list(features)]


def _count(texts: list[str], test: Any) -> np.ndarray:
    return np.array([sum(1 for c in t if test(c)) for t in texts], dtype=np.float64)


def _is_punctuation(char: str) -> bool:
    return not char.isalnum() and not char.isspace()
