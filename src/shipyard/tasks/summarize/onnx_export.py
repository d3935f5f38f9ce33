"""A seq2seq model as three ONNX graphs, for the torch-free decoding loop in ``generate.py``.

* ``encoder.onnx``: ``input_ids``, ``attention_mask`` (batch, source) -> ``hidden``.
* ``decoder.onnx``: ``decoder_input_ids`` (batch, target), ``encoder_hidden``,
  ``encoder_attention_mask`` -> ``logits`` of the last position (batch, vocab), and the
  key/value cache: ``present.{i}.key``/``.value`` (self-attention, per layer) and
  ``cross.{i}.key``/``.value`` (cross-attention over the document, per layer). Run on the
  whole prefix at every step it decodes without a cache; run once on the start token it
  opens the cache.
* ``decoder_with_past.onnx``: the newest token (batch, 1), ``encoder_attention_mask`` and the
  cache (``past.{i}.key``/``.value`` and ``cross.{i}.key``/``.value``) -> ``logits`` and the
  grown ``present.{i}.key``/``.value``. Each step then costs one token, not the whole prefix,
  and the document's cross-attention keys/values are projected once, not at every step.

The graphs wrap the model's own top-level ``forward`` (``EncoderDecoderModel``, BART, T5,
Pegasus alike) with a Hugging Face ``EncoderDecoderCache`` built from the flat tensors, and
are traced with the TorchScript exporter (``dynamo=False``) with dynamic batch, source,
target and cache axes. ``graph_spec`` (``generation.json`` beside the graphs) tells the
loader the special token ids and the cache layout, so ``generate.py`` needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shipyard.export.shared_weights import share_weights

#: file names inside a model package (roles in the manifest: encoder, decoder, decoder_with_past)
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past.onnx"
SPEC_FILE = "generation.json"
#: the weights of all three graphs, each distinct tensor once (ONNX external data)
WEIGHTS_FILE = "weights.bin"
OPSET = 17


def _cache(self_kv: list[tuple[Tensor, Tensor]], cross_kv: list[tuple[Tensor, Tensor]]) -> Any:
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(self_kv or None), DynamicCache(cross_kv or None))


def _encoder_output(hidden: Tensor) -> Any:
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=hidden)


class EncoderGraph(nn.Module):
    """Document tokens -> the encoder's last hidden states."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()  # type: ignore[operator]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden: Tensor = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return hidden


class DecoderGraph(nn.Module):
    """A whole prefix -> last-position logits, the self-attention cache and the cross cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, decoder_input_ids: Tensor, encoder_hidden: Tensor, encoder_attention_mask: Tensor
    ) -> tuple[Tensor, ...]:
        out = self.model(
            encoder_outputs=_encoder_output(encoder_hidden),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            cache=_cache([], []),
            use_cache=True,
            return_dict=True,
        )
        flat: list[Tensor] = [out.logits[:, -1, :]]
        cache = out.cache
        for layer in cache.self_attention_cache.layers:
            flat += [layer.keys, layer.values]
        for layer in cache.cross_attention_cache.layers:
            flat += [layer.keys, layer.values]
        return tuple(flat)


class DecoderWithPastGraph(nn.Module):
    """The newest token and the cache -> last-position logits and the grown self cache."""

    def __init__(self, model: nn.Module, layers: int, hidden_size: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.hidden_size = hidden_size

    def forward(
        self, decoder_input_ids: Tensor, encoder_attention_mask: Tensor, *cache: Tensor
    ) -> tuple[Tensor, ...]:
        n = self.layers
        past = [(cache[2 * i], cache[2 * i + 1]) for i in range(n)]
        cross = [(cache[2 * n + 2 * i], cache[2 * n + 2 * i + 1]) for i in range(n)]
        # The cross cache replaces the encoder states in every layer; the model's forward
        # still wants them for their shape (batch, source), so zeros of that shape stand in.
        key = cross[0][0]
        stand_in = key.new_zeros((key.shape[0], key.shape[2], self.hidden_size))
        out = self.model(
            encoder_outputs=_encoder_output(stand_in),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            cache=_cache(past, cross),
            use_cache=True,
            return_dict=True,
        )
        flat: list[Tensor] = [out.logits[:, -1, :]]
        for layer in out.cache.self_attention_cache.layers:
            flat += [layer.keys, layer.values]
        return tuple(flat)


def cache_names(prefix: str, layers: int) -> list[str]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` for each layer, in graph order."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def export_seq2seq(
    model: nn.Module,
    folder: Path,
    special: dict[str, int],
    *,
    max_source_length: int,
    max_target_length: int,
) -> dict[str, Any]:
    """Write the three graphs and ``generation.json`` into ``folder``; returns the spec.

    ``special``: decoder_start/eos/pad ids (``training.start_ids(model)``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch, source, target = 2, 7, 3
    input_ids = torch.full((batch, source), 1000, dtype=torch.long)
    mask = torch.ones((batch, source), dtype=torch.long)
    mask[1, -2:] = 0  # a padded row, so the trace cannot assume a full mask
    start = torch.full((batch, target), special["decoder_start_token_id"], dtype=torch.long)

    encoder = EncoderGraph(model).eval()
    decoder = DecoderGraph(model).eval()
    with torch.no_grad():
        hidden = encoder(input_ids, mask)
        probe = decoder(start, hidden, mask)
    layers = (len(probe) - 1) // 4
    heads, head_dim = int(probe[1].shape[1]), int(probe[1].shape[3])
    hidden_size = int(hidden.shape[-1])
    spec: dict[str, Any] = {
        **special,
        "layers": layers,
        "heads": heads,
        "head_dim": head_dim,
        "hidden_size": hidden_size,
        "vocab_size": int(probe[0].shape[-1]),
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
        "graphs": {
            "encoder": ENCODER_FILE,
            "decoder": DECODER_FILE,
            "decoder_with_past": DECODER_WITH_PAST_FILE,
        },
    }
    present, past, cross = (
        cache_names("present", layers),
        cache_names("past", layers),
        cache_names("cross", layers),
    )
    cache_axes = {0: "batch", 2: "cache"}
    source_axes = {0: "batch", 2: "source"}

    _export(
        encoder,
        (input_ids, mask),
        folder / ENCODER_FILE,
        ["input_ids", "attention_mask"],
        ["hidden"],
        {
            "input_ids": {0: "batch", 1: "source"},
            "attention_mask": {0: "batch", 1: "source"},
            "hidden": {0: "batch", 1: "source"},
        },
    )
    _export(
        decoder,
        (start, hidden, mask),
        folder / DECODER_FILE,
        ["decoder_input_ids", "encoder_hidden", "encoder_attention_mask"],
        ["logits", *present, *cross],
        {
            "decoder_input_ids": {0: "batch", 1: "target"},
            "encoder_hidden": {0: "batch", 1: "source"},
            "encoder_attention_mask": {0: "batch", 1: "source"},
            "logits": {0: "batch"},
            **{name: {0: "batch", 2: "target"} for name in present},
            **dict.fromkeys(cross, source_axes),
        },
    )
    step = torch.full((batch, 1), 2000, dtype=torch.long)
    with_past = DecoderWithPastGraph(model, layers, hidden_size).eval()
    _export(
        with_past,
        (step, mask, *probe[1 : 1 + 2 * layers], *probe[1 + 2 * layers :]),
        folder / DECODER_WITH_PAST_FILE,
        ["decoder_input_ids", "encoder_attention_mask", *past, *cross],
        ["logits", *present],
        {
            "decoder_input_ids": {0: "batch"},
            "encoder_attention_mask": {0: "batch", 1: "source"},
            "logits": {0: "batch"},
            **dict.fromkeys(past, cache_axes),
            **dict.fromkeys(cross, source_axes),
            **{name: {0: "batch", 2: "cache_plus_one"} for name in present},
        },
    )
    # Both decoder graphs carry the whole decoder: stored once, the package is ~40% smaller.
    share_weights(folder, [ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE], WEIGHTS_FILE)
    spec["weights"] = WEIGHTS_FILE
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return spec


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    import warnings

    # A fresh wrapper is in training mode, and the exporter restores the wrapper's mode
    # (recursively, into the model) after tracing: without eval() here the model would
    # come back with dropout on.
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape read in Hugging Face code; the
        # parity tests, at other batch sizes and lengths than the trace's, are the check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,  # type: ignore[arg-type]
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
