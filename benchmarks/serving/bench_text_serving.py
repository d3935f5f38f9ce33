"""Text-serving throughput and latency for the two text tasks, one command, one run, with
the serving benchmark's harness (bench_serving.py: wrk, the same server start and stop).

Run: .venv/bin/python benchmarks/serving/bench_text_serving.py [--duration 10]
     [--concurrency 1 8 32] [--summarize-duration 20] [--summarize-concurrency 1 4 8]
     [--summarize-package PATH [--summarize-run RUN_ID]] [--home DIR]
Needs `wrk` (Debian: apt-get install wrk).

Models:
  * a MiniLM text classifier (task=text, BBC News, `data.limit=30 trainer.max_epochs=1
    model.max_length=128`): every request carries one real article of the test split;
  * a summariser (task=summarize): the package given by --summarize-package, or the
    default MiniLM encoder-decoder trained quickly (`data.limit=10 trainer.max_epochs=1
    model.max_source_length=128 model.max_target_length=32`); every request carries one
    real document of the test split. A summary's cost is its decoding loop, so the run
    reports the generated tokens per summary beside the throughput: a barely trained
    model may write to the length limit every time, which is the worst case.
Cases, per model:
  (a) raw in-process session at its best batch size on real test texts, tokenised by the
      package's tokenizer: ONNX Runtime over model.onnx for the classifier, the package's
      GenerationSession (encoder, decoder graphs and decoding loop) for the summariser;
  (b) `shipyard serve --package PKG`, one text per request to /predict;
  (b3) the same text as a V2 infer request, a JSON BYTES tensor named "text";
  (c) `shipyard serve` with batching off (SHIPYARD_SERVE_MAX_BATCH_SIZE=1), /predict;
  (d) the reference pattern: FastAPI calling the eager PyTorch model per request,
      tokenising with the Hugging Face tokenizer (reference_app.py); for a package given
      by path only with --summarize-run.
Each case is probed with one request first: a case whose probe is refused (non-2xx) is
recorded with the server's answer and not load-tested. The prediction log is on (SQLite)
unless --no-prediction-log. Prints a table per model (requests/s, p50, p99, errors, b/a,
b/d) and writes JSON next to this file (results-text.json; a filtered run:
results-text-partial.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from elsewhere (tests): bench_serving sits here
    sys.path.insert(0, str(HERE))

from bench_serving import (  # noqa: E402
    Request,
    free_port,
    run_wrk,
    shipyard,
    start,
    stop,
)

CLASSIFIER = "MiniLM classifier (BBC News)"
SUMMARIZER = "MiniLM encoder-decoder summariser"
CLASSIFIER_TRAIN = (
    "task=text",
    "data.limit=30",
    "trainer.max_epochs=1",
    "model.max_length=128",
    "quantize=null",
    "export.latency.repeats=3",
)
SUMMARIZER_TRAIN = (
    "task=summarize",
    "data.limit=10",
    "trainer.max_epochs=1",
    "model.max_target_length=32",
    "model.max_source_length=128",
)
#: texts tokenised for the raw limit (tiled to the batch size); a summary costs ~1 s
RAW_TEXTS = {"text": 64, "summarize": 16}


def build_classifier(home: Path) -> dict[str, Any]:
    done = shipyard(home, "pipeline", *CLASSIFIER_TRAIN, "--until", "export")
    return {"package": done["package"], "run": done["run_id"]}


def build_summarizer(home: Path, package: str | None, run: str | None) -> dict[str, Any]:
    if package:
        return {"package": str(Path(package).resolve()), "run": run}
    done = shipyard(home, "pipeline", *SUMMARIZER_TRAIN, "--until", "export")
    return {"package": done["package"], "run": run or done["run_id"]}


def test_texts(package: str) -> list[str]:
    """The test split's texts of the snapshot the package was trained on (its lineage)."""
    from shipyard.data.snapshot import SnapshotStore
    from shipyard.export.package import load_package
    from shipyard.tasks.text import texts_of

    lineage = load_package(package).manifest.lineage
    try:
        snapshot = SnapshotStore(lineage.snapshot_store).get(lineage.snapshot_id)
        texts = [str(t) for t in texts_of(snapshot.load("test").features)]
    except Exception as exc:  # any failure to reach the snapshot says the same
        sys.exit(
            f"cannot read the test texts of {package}: its snapshot "
            f"{lineage.snapshot_id} in {lineage.snapshot_store} ({exc})"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        sys.exit(f"the test split of {package}'s snapshot has no texts")
    return texts


def tokenize(package: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (rows, longest) and lengths by the package's tokenizer, as the server does."""
    from shipyard.export.package import load_package
    from shipyard.tasks.text.tokenizer import TextTokenizer

    loaded = load_package(package)
    spec = loaded.manifest.tokenizer
    if spec is None:
        sys.exit(f"{package} has no tokenizer: not a text model")
    encoded = TextTokenizer.from_file(loaded.path / spec.file).encode(texts)
    return np.asarray(encoded.ids, dtype=np.int64), np.asarray(encoded.lengths)


def raw_limit(
    package: str, ids: np.ndarray, batch_sizes: list[int], repeats: int
) -> dict[str, Any]:
    """(a): the best texts/s of the package's session over batch sizes and 1-2 intra-op
    threads (``measure_latency``: a warm-up call, then timed calls of every output)."""
    from shipyard.export.latency import measure_latency
    from shipyard.export.package import load_package

    path = load_package(package).graph_path("fp32")
    best: dict[str, Any] = {"rows_per_s": 0.0}
    per_batch: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        measured = measure_latency(path, ids, batch_sizes, repeats, threads)
        for batch, latency in measured.items():
            per_batch[f"{batch}x{threads}t"] = {
                "rows_per_s": latency.rows_per_s,
                "p50_ms": latency.p50_ms,
            }
            if latency.rows_per_s > best["rows_per_s"]:
                best = {"rows_per_s": latency.rows_per_s, "batch": batch, "threads": threads}
    return {**best, "measured": per_batch}


def generated_tokens(package: str, ids: np.ndarray) -> dict[str, Any]:
    """What the summariser writes for these documents: generated tokens per summary (end
    token included when reached) and how many ran into the length limit."""
    from shipyard.export.package import load_package
    from shipyard.export.scoring import onnx_session

    session = onnx_session(load_package(package).graph_path("fp32"))
    counts: list[int] = []
    for begin in range(0, len(ids), 8):
        sequences = session.run(["sequences"], {"input_ids": ids[begin : begin + 8]})[0]
        counts += [int(n) for n in (sequences != session.pad_id).sum(axis=1)]
    limit = int(session.decoding["max_length"] or session.summarizer.max_target_length) - 1
    return {
        "mean": float(np.mean(counts)),
        "per_document": counts,
        "limit": limit,  # max_length counts the start token
        "at_limit": sum(c >= limit for c in counts),
        "decoding": {k: session.decoding[k] for k in sorted(session.decoding)},
    }


def text_requests(text: str, served_name: str, task: str) -> dict[str, Request]:
    headers = {"Content-Type": "application/json"}
    v2: dict[str, Any] = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]
    }
    if task == "text":  # as bench_serving asks: the probabilities, not the embedding
        v2["outputs"] = [{"name": "probabilities"}]
    return {
        "json": Request("/predict", json.dumps({"instances": [text]}).encode(), headers),
        "v2": Request(f"/v2/models/{served_name}/infer", json.dumps(v2).encode(), headers),
    }


def probe(port: int, request: Request, timeout: float) -> tuple[bool, str]:
    """One request before the load: (answered 2xx, the answer's start)."""
    call = urllib.request.Request(
        f"http://127.0.0.1:{port}{request.path}", request.body, request.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return True, response.read(400).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(400).decode(errors='replace')}"
    except OSError as exc:
        return False, f"no answer: {exc}"


def serve_cases(
    home: Path,
    model: dict[str, Any],
    requests: dict[str, Request],
    levels: list[int],
    duration: int,
    timeout_s: float,
    prediction_log: bool = True,
    only: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cases b, b3, c, d: per case either the wrk results per concurrency, or why not."""
    env = {**os.environ, "SHIPYARD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    log = {"SHIPYARD_SERVE_PREDICTION_LOG": "true" if prediction_log else "false"}
    serve = [sys.executable, "-m", "shipyard", "serve", "--package", model["package"]]
    cases: dict[str, tuple[list[str], dict[str, str], Request] | str] = {}
    for label, batch, request in (
        ("b) shipyard", "64", requests["json"]),
        ("b3) shipyard, V2 JSON BYTES", "64", requests["v2"]),
        ("c) shipyard, batching off", "1", requests["json"]),
    ):
        cases[label] = (serve, {**env, **log, "SHIPYARD_SERVE_MAX_BATCH_SIZE": batch}, request)
    reference = "d) FastAPI + eager PyTorch"
    if model.get("run"):
        command = [sys.executable, str(HERE / "reference_app.py"), "--run", model["run"]]
        cases[reference] = (command, env, requests["json"])
    else:
        cases[reference] = "skipped: no run id (pass --summarize-run RUN_ID)"
    if only:
        cases = {k: v for k, v in cases.items() if k.split(")")[0] in only}
    results: dict[str, dict[str, Any]] = {}
    for label, case in cases.items():
        if isinstance(case, str):
            results[label] = {"error": case}
            continue
        command, case_env, request = case
        port = free_port()
        try:
            process = start([*command, "--port", str(port)], case_env, port)
        except SystemExit as exc:  # start() exits when the server dies or is not ready
            results[label] = {"error": f"did not start: {exc}"}
            continue
        try:
            ok, answer = probe(port, request, timeout_s)
            if not ok:
                results[label] = {"error": f"probe refused, not load-tested: {answer}"}
                continue
            run_wrk(port, request, max(levels), 2, timeout_s)  # warm-up
            by_level: dict[int, dict[str, Any]] = {}
            for clients in levels:
                try:
                    by_level[clients] = run_wrk(port, request, clients, duration, timeout_s)
                except Exception as exc:  # e.g. no request finished in time
                    by_level[clients] = {"error": f"wrk: {exc!r}"}
            results[label] = {"probe": answer[:200], "levels": by_level}
        finally:
            stop(process)
    return results


def benchmark_model(
    home: Path,
    name: str,
    model: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from shipyard.export.package import load_package
    from shipyard.serve.reload import package_name

    manifest = load_package(model["package"]).manifest
    task = manifest.task
    summarize = manifest.output_kind == "text"
    texts = test_texts(model["package"])[: RAW_TEXTS["summarize" if summarize else "text"]]
    ids, lengths = tokenize(model["package"], texts)
    request_text = texts[0]  # wrk sends one fixed body: the first test text
    entry: dict[str, Any] = {
        "package": model["package"],
        "run": model.get("run"),
        "task": task,
        "request_text_chars": len(request_text),
        "request_tokens": int(lengths[0]),
        "raw_texts": len(texts),
        "mean_tokens": float(lengths.mean()),
    }
    if summarize:
        entry["generated_tokens"] = generated_tokens(model["package"], ids)
        batch_sizes, repeats = args.summarize_batch_sizes, args.summarize_repeats
        levels, duration = args.summarize_concurrency, args.summarize_duration
        timeout_s = args.summarize_timeout
    else:
        batch_sizes, repeats = args.batch_sizes, args.repeats
        levels, duration, timeout_s = args.concurrency, args.duration, args.timeout
    entry["raw_limit"] = raw_limit(model["package"], ids, batch_sizes, repeats)
    served = package_name(manifest)  # the name serve gives a bare package folder
    requests = text_requests(request_text, served, task)
    entry["cases"] = serve_cases(
        home,
        model,
        requests,
        levels,
        duration,
        timeout_s,
        not args.no_prediction_log,
        args.cases,
    )
    entry["duration_s"], entry["wrk_timeout_s"] = duration, timeout_s
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per batch size")
    parser.add_argument("--summarize-duration", type=int, default=20)
    parser.add_argument("--summarize-concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--summarize-timeout", type=float, default=60.0)
    parser.add_argument("--summarize-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--summarize-repeats", type=int, default=3)
    parser.add_argument("--summarize-package", help="benchmark this summariser package")
    parser.add_argument(
        "--summarize-run", help="the package's run, for case d (in --home's tracking)"
    )
    parser.add_argument("--home", help="reuse this SHIPYARD_HOME (models are built once)")
    parser.add_argument(
        "--cases", nargs="+", help="only these cases, by their letter: b b3 c d (default: all)"
    )
    parser.add_argument(
        "--models", nargs="+", help="only models whose name contains one of these (classifier, summariser)"
    )  # fmt: skip
    parser.add_argument(
        "--no-prediction-log",
        action="store_true",
        help="serve with serve.prediction_log=false (default: the log on, SQLite)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install wrk (Debian/Ubuntu), brew install wrk")
    home = Path(args.home or tempfile.mkdtemp(prefix="shipyard-text-serving-bench-"))
    os.environ["SHIPYARD_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wanted = [n for n in (CLASSIFIER, SUMMARIZER) if not args.models or any(m in n for m in args.models)]  # fmt: skip
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "prediction_log": not args.no_prediction_log,
        "models": {},
    }
    for name in wanted:
        if name == CLASSIFIER:
            model = build_classifier(home)
        else:
            model = build_summarizer(home, args.summarize_package, args.summarize_run)
            if args.summarize_package:
                name = f"summariser {model['package']}"
        entry = benchmark_model(home, name, model, args)
        report["models"][name] = entry
        print_table(name, entry)
    filtered = args.cases or args.models
    out = HERE / ("results-text-partial.json" if filtered else "results-text.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{report['machine']}; JSON: {out}")


def print_table(name: str, entry: dict[str, Any]) -> None:
    limit = entry["raw_limit"]
    print(f"\n### {name}\n")
    print(
        f"a) raw session, best batch: {limit['rows_per_s']:,.2f} texts/s "
        f"(batch {limit['batch']}, {limit['threads']} thread(s)); request text "
        f"{entry['request_tokens']} tokens"
    )
    tokens = entry.get("generated_tokens")
    if tokens:
        print(
            f"generated tokens per summary: mean {tokens['mean']:.1f} over {len(tokens['per_document'])} "
            f"test documents, the request's {tokens['per_document'][0]}; limit {tokens['limit']}, "
            f"{tokens['at_limit']} at the limit"
        )  # fmt: skip
    print("\n| case | clients | requests/s | p50 ms | p99 ms | errors | b/a | b/d |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    reference = entry["cases"].get("d) FastAPI + eager PyTorch", {}).get("levels")
    for label, case in entry["cases"].items():
        if "error" in case:
            print(f"| {label} | | | | | {case['error'][:140]} | | |")
            continue
        for clients, r in case["levels"].items():
            if "error" in r:
                print(f"| {label} | {clients} | | | | {r['error'][:140]} | | |")
                continue
            ratios = ("", "")
            if label.startswith("b"):
                ref = (reference or {}).get(clients, {})
                ratios = (
                    f"{r['requests_per_s'] / limit['rows_per_s']:.2f}",
                    f"{r['requests_per_s'] / ref['requests_per_s']:.1f}x"
                    if ref.get("requests_per_s")
                    else "",
                )
            print(
                f"| {label} | {clients} | {r['requests_per_s']:,.2f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['errors']} | {ratios[0]} | {ratios[1]} |"
            )


if __name__ == "__main__":
    main()
