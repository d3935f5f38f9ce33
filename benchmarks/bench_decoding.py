"""What decoding choices cost and buy for a summariser package, on its own test split.

Run: .venv/bin/python benchmarks/bench_decoding.py PACKAGE_FOLDER [--docs 8] [--threads 1]
(a package from `shipyard pipeline task=summarize`: <home>/packages/<run id>, with the
snapshot it names still in its store).

Prints, in one run on the same documents:
  * seconds per summary one document at a time (the server's worst case), with the
    key/value cache (decoder_with_past.onnx, the default) and without it (decoder.onnx
    on the whole prefix at every step): the ratio is what the cache buys;
  * ROUGE-1/2/L of greedy and 4-beam decoding on the whole test split, beside lead-3,
    with the mean summary length: what beams buy, for their cost per summary.
Writes the figures as JSON next to this file (results-decoding.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def seconds_per_summary(
    summarizer: Any, ids: np.ndarray, mask: np.ndarray, options: dict[str, Any], use_past: bool
) -> float:
    """Best of two rounds of one document at a time (one stall must not decide)."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for row in range(len(ids)):
            summarizer.generate(
                ids[row : row + 1], mask[row : row + 1], use_past=use_past, **options
            )
        best = min(best, (time.perf_counter() - started) / max(len(ids), 1))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("package", type=Path)
    parser.add_argument("--docs", type=int, default=8, help="documents timed one at a time")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    from shipyard.data.snapshot import SnapshotStore
    from shipyard.export.package import load_package
    from shipyard.tasks.summarize.generate import OnnxSummarizer
    from shipyard.tasks.summarize.metrics import lead_baseline, summary_scores
    from shipyard.tasks.text import texts_of

    package = load_package(args.package)
    lineage = package.manifest.lineage
    test = SnapshotStore(lineage.snapshot_store).get(lineage.snapshot_id).load("test")
    documents, references = texts_of(test.features), [str(t) for t in test.target]
    summarizer = OnnxSummarizer(package.path, threads=args.threads)
    decoding = summarizer.spec.get("decoding", {})
    options = {
        "max_length": decoding.get("max_length"),
        "no_repeat_ngram_size": int(decoding.get("no_repeat_ngram_size", 3)),
    }
    ids, mask = summarizer.encode(documents)

    timing = {
        f"{'with' if past else 'without'}_cache_s": seconds_per_summary(
            summarizer, ids[: args.docs], mask[: args.docs], options, past
        )
        for past in (True, False)
    }
    quality: dict[str, dict[str, float]] = {}
    for beams in (1, 4):
        generated: list[list[int]] = []
        started = time.perf_counter()
        for begin in range(0, len(ids), 16):
            part = slice(begin, begin + 16)
            generated += summarizer.generate(ids[part], mask[part], num_beams=beams, **options).ids
        seconds = (time.perf_counter() - started) / len(ids)
        quality[f"beams_{beams}"] = summary_scores(summarizer.decode(generated), references) | {
            "seconds_per_summary_batched": seconds
        }
    quality["lead_3"] = lead_baseline(documents, references, 3)

    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "package": str(package.path),
        "test_documents": len(documents),
        "threads": args.threads,
        "timing_one_document": timing,
        "cache_speedup": timing["without_cache_s"] / timing["with_cache_s"],
        "quality": quality,
    }
    print(f"one document at a time ({args.docs} docs, {args.threads} thread(s)):")
    print(
        f"  with cache {timing['with_cache_s']:.3f} s, without {timing['without_cache_s']:.3f} s "
        f"per summary: the cache is {report['cache_speedup']:.1f}x faster"
    )
    print("\n| decoding | ROUGE-1 | ROUGE-2 | ROUGE-L | words | s/summary (batched) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, scores in quality.items():
        print(
            f"| {name} | {scores['rouge1']:.3f} | {scores['rouge2']:.3f} | {scores['rougeL']:.3f} "
            f"| {scores.get('summary_words', float('nan')):.1f} "
            f"| {scores.get('seconds_per_summary_batched', float('nan')):.3f} |"
        )
    out = HERE / "results-decoding.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{report['machine']}; JSON: {out}")


if __name__ == "__main__":
    main()
