"""Summarisation as a :class:`~shipyard.tasks.base.TrainingHalf`: what ``shipyard train``,
``evaluate`` and ``export`` call, on top of the model code in ``training.py``.

The rooms around a task know the output kind, not the task: for :attr:`OutputKind.TEXT`
the Lightning module feeds the target to the model (teacher forcing), the loss is the
token cross-entropy, and a split is scored by generating (:meth:`SummarizeHalf.score_split`)
rather than by one forward pass. Everything else (snapshots, checkpoints, tracking, the
promotion gate) is the same as for every task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from shipyard.tasks.base import Split
from shipyard.tasks.summarize.training import (
    Seq2SeqConfig,
    SummarizeTraining,
    generate_ids,
    teacher_forced_logits,
    token_loss,
)
from shipyard.tasks.text import texts_of

#: what ``score_split`` generates with unless the model config says otherwise
DEFAULT_NO_REPEAT_NGRAM = 3


class Summarizer(nn.Module):
    """A Hugging Face seq2seq model behind Shipyard's training contract: token ids of the
    documents (padded with the pad id; the mask is computed from it) and, for training,
    the summary's label ids (-100 padded) -> teacher-forced logits (rows, tokens, vocab)."""

    def __init__(self, model: nn.Module, special: dict[str, int]) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(special["pad_token_id"])
        self.start_id = int(special["decoder_start_token_id"])

    def forward(self, ids: Tensor, labels: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        return teacher_forced_logits(
            self.model, ids, mask, labels, start=self.start_id, pad=self.pad_id
        )


class SummarizeHalf(SummarizeTraining):
    """The training half of ``task=summarize``."""

    def __init__(self) -> None:
        super().__init__()
        self.no_repeat_ngram_size = DEFAULT_NO_REPEAT_NGRAM
        self.num_beams = 1

    def build_model(self, model_cfg: DictConfig, schema: dict[str, Any], train: Split) -> nn.Module:
        """The seq2seq model of ``model_cfg`` (``model.family``, ``model.backbone``, the
        source and target lengths), wrapped for the training loop."""
        config = Seq2SeqConfig.from_node(model_cfg)
        self.no_repeat_ngram_size = int(
            model_cfg.get("no_repeat_ngram_size", DEFAULT_NO_REPEAT_NGRAM)
        )
        self.num_beams = int(model_cfg.get("num_beams", 1))
        return Summarizer(self.build(config), self.special_ids())

    def to_tensors(self, split: Split, schema: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Document token ids (truncated at ``max_source_length``, padded with the pad id)
        and summary label ids (truncated at ``max_target_length``, padded with -100)."""
        texts = texts_of(split.features)
        batch = self.encode(texts, [str(t) for t in split.target])
        return batch.input_ids, batch.labels

    @torch.no_grad()
    def score_split(self, model: nn.Module, split: Split) -> dict[str, Any]:
        """ROUGE-1/2/L of the model's summaries (PyTorch ``generate`` with the decoding the
        package will serve: ``model.num_beams``, ``model.no_repeat_ngram_size``) against the
        split's reference summaries, the mean words per summary, and ``loss``: the
        teacher-forced cross-entropy per summary token (what training's ``val_loss`` is)."""
        from shipyard.tasks.summarize.metrics import summary_scores

        hf_model = model.model if isinstance(model, Summarizer) else model
        loss = self.token_loss(Summarizer(hf_model, self.special_ids()), split)
        ids = generate_ids(
            hf_model,
            self,
            texts_of(split.features),
            max_length=self.config.max_target_length,
            num_beams=self.num_beams,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )
        scores = summary_scores(self.decode(ids), [str(t) for t in split.target])
        return scores | {"loss": loss}

    def token_loss(self, model: Summarizer, split: Split, batch_size: int = 16) -> float:
        """Mean cross-entropy per summary token over ``split``, teacher-forced."""
        ids, labels = self.to_tensors(split, {})
        total, tokens = 0.0, 0
        for begin in range(0, len(ids), batch_size):
            part = labels[begin : begin + batch_size]
            logits = model(ids[begin : begin + batch_size], part)
            count = int((part != -100).sum())
            total += float(token_loss(logits, part)) * count
            tokens += count
        return total / max(tokens, 1)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Generated ids as text (special tokens dropped)."""
        return [str(s) for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def baseline(self, train: Split, test: Split) -> dict[str, float]:
        """Lead-3 on the test split: the first three sentences of each document, scored
        like the model. ``train`` is unused: lead-k learns nothing."""
        from shipyard.tasks.summarize.metrics import lead_baseline

        return lead_baseline(texts_of(test.features), [str(t) for t in test.target], 3)

    def package_files(self, folder: Path) -> list[str]:
        """The tokenizer the server encodes documents and decodes summaries with."""
        return [self.write_tokenizer(folder).name]


TRAINING = SummarizeHalf()
