"""``shipyard export`` of a model that generates text: three graphs and a decoding spec.

The same steps as a single-graph export (``build.py``), each in the form a decoding loop
needs: the encoder, decoder and cached decoder are written by
:func:`~shipyard.tasks.summarize.onnx_export.export_seq2seq` with ``generation.json``
(special ids, cache layout, and the ``decoding`` settings of the model config); parity is
the share of test documents whose ONNX greedy summary equals PyTorch's ``generate`` token
for token (at least ``export.parity_min_share``), beside the largest difference of the
document embeddings; metrics (ROUGE) and latency are those of whole summaries, measured
through :class:`~shipyard.tasks.summarize.session.GenerationSession`, the object the
server runs. No int8 graph yet: ``quantize=int8`` is refused before anything is done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from shipyard.config import to_container
from shipyard.errors import ConfigError
from shipyard.export.latency import measure_latency
from shipyard.export.onnx_export import ParityError
from shipyard.export.package import (
    Manifest,
    ModelPackage,
    ParityReport,
    TensorSpec,
    checksums,
    describe_graph,
    input_schema,
    save_package,
)
from shipyard.export.parts import (
    finite,
    input_files,
    input_spec,
    lineage,
    tokenizer_spec,
    version,
)
from shipyard.export.report import REPORT, render_report
from shipyard.export.scoring import score_onnx
from shipyard.tasks import Task
from shipyard.tasks.base import OutputKind
from shipyard.train.evaluate import RunModel


def check_quantize(quantize: str | None) -> None:
    """Generated-text packages are fp32 only, for now; refused before any work."""
    if quantize:
        raise ConfigError(
            f"quantize={quantize} is not available for models that generate text yet: "
            "export with quantize=null (the summarize task's default)"
        )


def assemble_seq2seq(
    cfg: DictConfig,
    loaded: RunModel,
    run_id: str,
    staging: Path,
    destination: Path,
) -> ModelPackage:
    """Write the package into ``staging`` and move it to ``destination``."""
    from shipyard.tasks import get_task
    from shipyard.tasks.summarize.onnx_export import (
        ENCODER_FILE,
        SPEC_FILE,
        WEIGHTS_FILE,
        export_seq2seq,
    )
    from shipyard.tasks.summarize.training import start_ids

    task: Task = get_task(str(loaded.run_cfg.task.name))
    half: Any = loaded.half
    hf_model = getattr(loaded.model, "model", loaded.model)
    extra_files = input_files(loaded, staging)
    schema = input_schema(staging, loaded.schema)
    test = loaded.snapshot.load("test")
    rows = task.model_input(test.features, schema)

    spec = export_seq2seq(
        hf_model,
        staging,
        start_ids(hf_model),
        max_source_length=half.config.max_source_length,
        max_target_length=half.config.max_target_length,
    )
    spec["decoding"] = {
        "num_beams": int(half.num_beams),
        "no_repeat_ngram_size": int(half.no_repeat_ngram_size),
        "length_penalty": 1.0,
        "max_length": int(half.config.max_target_length),
    }
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")

    parity = _parity(cfg, hf_model, half, staging, rows, test)
    if not parity.passed:
        raise ParityError(
            f"the ONNX graphs of run {run_id} do not reproduce PyTorch on the test split: "
            f"{parity.sequences_equal:.1%} of {parity.rows} greedy summaries are the same token "
            f"for token (at least {_min_share(cfg):.0%} needed), embeddings differ by up to "
            f"{parity.max_abs_diff:.2e} (export.parity_tolerance={parity.tolerance:g}); "
            "nothing was written"
        )
    latency_cfg = cfg.export.latency
    threads = int(latency_cfg.threads)
    encoder = staging / ENCODER_FILE
    metrics = score_onnx(encoder, task.name, test, schema, threads)
    graphs = [
        describe_graph(
            encoder,
            role="encoder",
            metrics={k: float(v) for k, v in metrics.items() if finite(v)},
            latency=measure_latency(
                encoder, rows, list(latency_cfg.batch_sizes), int(latency_cfg.repeats), threads
            ),
            threads=threads,
        ),
        *(
            describe_graph(staging / spec["graphs"][role], role=role, threads=threads)
            for role in ("decoder", "decoder_with_past")
        ),
    ]
    manifest = Manifest(
        task=task.name,
        output_kind=OutputKind.TEXT.value,
        labels=None,
        input=input_spec(task, schema),
        outputs=[
            TensorSpec(
                name="sequences",
                dtype="int64",
                shape=[None, None],
                description="generated token ids after the start token (the end token "
                "included when reached), padded with the tokenizer's pad id; decoded with "
                "tokenizer.json",
            ),
            TensorSpec(
                name="embedding",
                dtype="float32",
                shape=[None, int(spec["hidden_size"])],
                description="the encoder's states mean-pooled over the document's tokens, "
                "compared by the drift monitor",
            ),
        ],
        tokenizer=tokenizer_spec(staging, extra_files),
        graphs=graphs,
        metrics={k: float(v) for k, v in loaded.run.data.metrics.items() if k.startswith("test_")},
        parity=parity,
        lineage=lineage(cfg, loaded, run_id),
        config=to_container(loaded.run_cfg),
        shipyard_version=version(),
    )
    (staging / REPORT).write_text(render_report(manifest, staging), encoding="utf-8")
    files = checksums(staging, [*extra_files, SPEC_FILE, WEIGHTS_FILE, REPORT])
    manifest = manifest.model_copy(update={"files": files})
    return save_package(staging, manifest, destination)


def _min_share(cfg: DictConfig) -> float:
    """``export.parity_min_share``: ONNX greedy summaries must equal PyTorch's on this share."""
    return float(cfg.export.parity_min_share)


@torch.no_grad()
def _parity(
    cfg: DictConfig,
    hf_model: Any,
    half: Any,
    folder: Path,
    rows: np.ndarray,
    test: Any,
) -> ParityReport:
    """Greedy summaries of ONNX Runtime against PyTorch's ``generate`` on the whole test
    split (same n-gram rule, same length), and the embeddings' largest difference."""
    from shipyard.tasks.summarize.generate import OnnxSummarizer
    from shipyard.tasks.summarize.session import mean_pool
    from shipyard.tasks.summarize.training import generate_ids
    from shipyard.tasks.text import texts_of

    summarizer = OnnxSummarizer(folder, threads=1)
    mask = (rows != summarizer.pad_id).astype(np.int64)
    limit = int(half.config.max_target_length)
    ngram = int(half.no_repeat_ngram_size)
    onnx_ids: list[list[int]] = []
    max_diff = 0.0
    hf_model.eval()
    for begin in range(0, len(rows), 16):
        ids, part = rows[begin : begin + 16], mask[begin : begin + 16]
        hidden = summarizer.encode_states(ids, part)
        onnx_ids += summarizer.decode_states(
            hidden, part, max_length=limit, no_repeat_ngram_size=ngram
        ).ids
        states = hf_model.get_encoder()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(part)
        ).last_hidden_state.numpy()
        diff = np.abs(mean_pool(states, part) - mean_pool(hidden, part))
        max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
    torch_ids = generate_ids(
        hf_model, half, texts_of(test.features), max_length=limit, no_repeat_ngram_size=ngram
    )
    equal = sum(a == b for a, b in zip(onnx_ids, torch_ids, strict=True))
    share = equal / max(len(rows), 1)
    tolerance = float(cfg.export.parity_tolerance)
    enough = share >= _min_share(cfg)
    return ParityReport(
        rows=len(rows),
        max_abs_diff=max_diff,
        labels_equal=enough,
        tolerance=tolerance,
        passed=enough and max_diff <= tolerance,
        sequences_equal=share,
    )


__all__ = ["assemble_seq2seq", "check_quantize"]
