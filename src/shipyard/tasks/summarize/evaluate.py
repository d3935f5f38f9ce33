"""The summarize core end to end, as one command that prints its figures:

    python -m shipyard.tasks.summarize.evaluate --steps 40 --out /tmp/summarize

trains the warm-started MiniLM encoder-decoder on ACLSum's training split, exports it to
ONNX, then on the test split reports ROUGE-1/2/L of the model (ONNX greedy decoding)
beside the lead-3 baseline, the share of documents whose ONNX greedy ids equal PyTorch's
``generate(num_beams=1, do_sample=False)``, and the time per summary with and without the
key/value cache. A stand-in for ``shipyard train/evaluate/export task=summarize`` until the
task is wired into those rooms; the figures in the tutorial come from here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def run(
    out: Path,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    max_source_length: int,
    max_target_length: int,
    test_limit: int | None,
    timing_docs: int,
    no_repeat_ngram_size: int,
) -> dict[str, Any]:
    """Train, export, score; returns the figures (also written to ``out/figures.json``)."""
    import torch

    from shipyard.tasks.summarize.corpus import load_corpus
    from shipyard.tasks.summarize.generate import OnnxSummarizer
    from shipyard.tasks.summarize.metrics import lead_baseline, rouge
    from shipyard.tasks.summarize.onnx_export import export_seq2seq
    from shipyard.tasks.summarize.training import (
        Seq2SeqConfig,
        SummarizeTraining,
        fit,
        generate_ids,
        start_ids,
    )

    torch.manual_seed(0)
    train = load_corpus(("train",))
    test = load_corpus(("test",), limit=test_limit)
    half = SummarizeTraining()
    config = Seq2SeqConfig(max_source_length=max_source_length, max_target_length=max_target_length)
    model = half.build_model(config)
    report = fit(
        model,
        half,
        train.documents,
        train.summaries,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        log_every=10,
    )
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_seq2seq(
        model,
        out,
        start_ids(model),
        max_source_length=max_source_length,
        max_target_length=max_target_length,
    )
    half.write_tokenizer(out)
    export_seconds = time.perf_counter() - started

    summarizer = OnnxSummarizer(out)
    ids, mask = summarizer.encode(test.documents)
    options: dict[str, Any] = {
        "max_length": max_target_length,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    started = time.perf_counter()
    onnx_ids: list[list[int]] = []
    for begin in range(0, len(test), 16):
        onnx_ids += summarizer.generate(
            ids[begin : begin + 16], mask[begin : begin + 16], **options
        ).ids
    onnx_seconds = time.perf_counter() - started
    torch_ids = generate_ids(
        model,
        half,
        test.documents,
        max_length=max_target_length,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    equal = sum(a == b for a, b in zip(onnx_ids, torch_ids, strict=True))
    beam_ids = summarizer.generate(ids, mask, num_beams=4, **options).ids
    figures: dict[str, Any] = {
        "corpus": f"{train.package}=={train.version}",
        "train_pairs": len(train),
        "test_pairs": len(test),
        "steps": steps,
        "batch_size": batch_size,
        "train_seconds": round(report.seconds, 1),
        "loss_first_10": sum(report.losses[:10]) / min(10, len(report.losses)),
        "loss_last_10": sum(report.losses[-10:]) / min(10, len(report.losses)),
        "export_seconds": round(export_seconds, 1),
        "onnx_greedy_seconds_per_summary": round(onnx_seconds / len(test), 3),
        "rouge_model_greedy": rouge(summarizer.decode(onnx_ids), test.summaries),
        "rouge_model_beam4": rouge(summarizer.decode(beam_ids), test.summaries),
        "rouge_lead3": lead_baseline(test.documents, test.summaries, 3),
        "parity_share": equal / len(test),
        "timing": _timing(summarizer, ids[:timing_docs], mask[:timing_docs], options),
        "examples": [
            {"reference": r, "model": m}
            for r, m in zip(test.summaries[:3], summarizer.decode(onnx_ids[:3]), strict=True)
        ],
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return figures


def _timing(summarizer: Any, ids: Any, mask: Any, options: dict[str, Any]) -> dict[str, float]:
    """Seconds per summary, one document at a time (the server's worst case), with and
    without the key/value cache; the best of two rounds, so one stall does not decide."""
    times: dict[str, float] = {}
    for use_past in (True, False):
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for row in range(len(ids)):
                summarizer.generate(
                    ids[row : row + 1], mask[row : row + 1], use_past=use_past, **options
                )
            best = min(best, (time.perf_counter() - started) / max(len(ids), 1))
        times["with_past" if use_past else "without_past"] = round(best, 3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("summarize-model"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-source-length", type=int, default=128)
    parser.add_argument("--max-target-length", type=int, default=80)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--timing-docs", type=int, default=4)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    figures = run(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
        test_limit=args.test_limit,
        timing_docs=args.timing_docs,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
