"""Serving throughput and latency, one command, one run, the same ONNX model for every case.

Run: .venv/bin/python benchmarks/serving/bench_serving.py [--duration 10] [--concurrency 1 8 32]
Needs `wrk` (Debian: apt-get install wrk), a closed-loop HTTP load generator written in C.

Cases, per model:
  (a) raw in-process ONNX Runtime at its best batch size: the limit on these cores;
  (b) `shipyard serve` (adaptive batching);
  (b2) the same with two worker processes (`--workers 2`);
  (c) `shipyard serve` with batching off (max_batch_size=1);
  (d) the reference pattern: FastAPI calling the eager PyTorch model per request
      (reference_app.py).
Models: the digits CNN (1x8x8) and a compute-heavier CNN on 3x32x32 inputs (three conv
blocks, trained for one epoch on generated 32x32 images: the weights do not change the
cost). Every request carries one image, as a client of an image service sends it.
The prediction log is on (SQLite) unless --no-prediction-log.
Prints a table (requests/s, p50, p99, errors) with the ratios b/a and b/d (for b2 too), and
writes JSON next to this file (results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CNN32 = ("model.channels=[32,64,128]", "model.hidden=256")  # argv, no shell: no quotes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shipyard(home: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "shipyard", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"shipyard {' '.join(args)} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def write_images(folder: Path, classes: int = 10, per_class: int = 40) -> None:
    """Generated 32x32 RGB images, one folder per class (a colour per class plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 255, 3)
        for index in range(per_class):
            noise = rng.normal(0, 40, (32, 32, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{index}.png")


def build_models(home: Path) -> dict[str, dict[str, Any]]:
    """Train and export both models; returns name -> {package, run, sample}."""
    quick = ("trainer.max_epochs=3", "trainer.early_stopping_patience=null", "quantize=null")
    digits = shipyard(home, "pipeline", "task=image", *quick, "--until", "export")
    images = home / "images32"
    write_images(images)
    cnn32 = shipyard(
        home,
        "pipeline",
        "task=image",
        "data=folder",
        f"data.path={images}",
        "data.image_size=[32,32]",
        "data.channels=3",
        *CNN32,
        "trainer.max_epochs=1",
        "trainer.early_stopping_patience=null",
        "quantize=null",
        "--until",
        "export",
    )
    return {
        "digits CNN 1x8x8": {"package": digits["package"], "run": digits["run_id"]},
        "CNN 3x32x32": {"package": cnn32["package"], "run": cnn32["run_id"]},
    }


def sample_instance(package: str) -> np.ndarray:
    from shipyard.export.package import load_package

    shape = load_package(package).manifest.input.shape[1:]
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, [int(d) for d in shape if d is not None]).astype(np.float32)


def raw_limit(package: str, instance: np.ndarray) -> dict[str, Any]:
    """(a): the best rows/s of one ORT session over batch sizes and 1-2 intra-op threads."""
    from shipyard.export.latency import measure_latency
    from shipyard.export.package import load_package

    path = load_package(package).graph_path("fp32")
    rows = np.repeat(instance[None], 256, axis=0)
    best: dict[str, Any] = {"rows_per_s": 0.0}
    for threads in (1, 2):
        measured = measure_latency(path, rows, [1, 8, 32, 64, 128, 256], 50, threads)
        for batch, latency in measured.items():
            if latency.rows_per_s > best["rows_per_s"]:
                best = {"rows_per_s": latency.rows_per_s, "batch": batch, "threads": threads}
    return best


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server on port {port} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"the server on port {port} was not ready within {timeout} s")


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_ready(port, process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@dataclass(frozen=True)
class Request:
    """What wrk sends: a path, a body (bytes: JSON or the V2 binary extension) and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


def json_request(instance: np.ndarray) -> Request:
    body = json.dumps({"instances": [instance.tolist()]}).encode()
    return Request("/predict", body, {"Content-Type": "application/json"})


def binary_request(instance: np.ndarray, model: str) -> Request:
    """One uint8 image as the V2 binary data extension: JSON header + raw bytes."""
    pixels = instance.astype(np.uint8)[None]
    head = json.dumps(
        {"inputs": [{"name": "features", "shape": list(pixels.shape), "datatype": "UINT8",
                     "parameters": {"binary_data_size": pixels.nbytes}}],
         "outputs": [{"name": "probabilities"}]}
    ).encode()  # fmt: skip
    return Request(
        f"/v2/models/{model}/infer",
        head + pixels.tobytes(),
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )


def lua_string(data: bytes) -> str:
    """Any bytes as a Lua string literal (decimal escapes: binary bodies survive)."""
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def run_wrk(
    port: int, request: Request, concurrency: int, duration: int, timeout_s: float | None = None
) -> dict[str, Any]:
    """wrk with a POST body; requests/s, p50 and p99 (ms), errors (non-2xx + socket errors).
    ``timeout_s``: wrk's per-request timeout (its default is 2 s; a slower answer counts as
    a socket timeout error)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        for name, value in request.headers.items():
            script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
        script.write(f"wrk.body = {lua_string(request.body)}\n")
    threads = min(2, concurrency)
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency",
         *(["--timeout", f"{timeout_s:g}s"] if timeout_s else []),
         "-s", script.name, f"http://127.0.0.1:{port}{request.path}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    Path(script.name).unlink()
    text = done.stdout
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", text, re.M))
    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|errors: .*?): (\d+)", text)
    )
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        "p50_ms": to_ms(percentiles["50"]),
        "p99_ms": to_ms(percentiles["99"]),
        "errors": errors,
    }


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def serve_cases(
    home: Path,
    model: dict[str, Any],
    requests: dict[str, Request],
    levels: list[int],
    duration: int,
    prediction_log: bool = True,
    only: list[str] | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    log = {"SHIPYARD_SERVE_PREDICTION_LOG": "true" if prediction_log else "false"}
    cases: dict[str, tuple[list[str], dict[str, str], Request]] = {}
    serve = [sys.executable, "-m", "shipyard", "serve", "--package", model["package"]]
    for label, batch, workers, request in (
        ("b) shipyard", "64", "1", requests["json"]),
        # A second worker process is the way to use a second core for HTTP and parsing.
        ("b2) shipyard, 2 workers", "64", "2", requests["json"]),
        ("b3) shipyard, V2 binary", "64", "1", requests["binary"]),
        ("b4) shipyard, V2 binary, 2 workers", "64", "2", requests["binary"]),
        ("c) shipyard, batching off", "1", "1", requests["json"]),
    ):
        cases[label] = (
            [*serve, "--workers", workers],
            {**env, **log, "SHIPYARD_SERVE_MAX_BATCH_SIZE": batch},
            request,
        )
    cases["d) FastAPI + eager PyTorch"] = (
        [sys.executable, str(HERE / "reference_app.py"), "--run", model["run"]],
        env,
        requests["json"],
    )
    if only:
        cases = {k: v for k, v in cases.items() if k.split(")")[0] in only}
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for label, (command, case_env, request) in cases.items():
        port = free_port()
        extra = ["--port", str(port)]
        process = start(command + extra, case_env, port)
        try:
            run_wrk(port, request, max(levels), 2)  # warm-up
            results[label] = {c: run_wrk(port, request, c, duration) for c in levels}
        finally:
            stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--home", help="reuse this SHIPYARD_HOME (models are built once)")
    parser.add_argument(
        "--cases",
        nargs="+",
        help="only these cases, by their letter: b b2 b3 b4 c d (default: all)",
    )
    parser.add_argument(
        "--models", nargs="+", help="only models whose name contains one of these (digits, 3x32x32)"
    )
    parser.add_argument(
        "--no-prediction-log",
        action="store_true",
        help="serve with serve.prediction_log=false (default: the log on, SQLite)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install wrk (Debian/Ubuntu), brew install wrk")
    home = Path(args.home or tempfile.mkdtemp(prefix="shipyard-serving-bench-"))
    os.environ["SHIPYARD_HOME"] = str(home)
    models = build_models(home)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "duration_s": args.duration,
        "prediction_log": not args.no_prediction_log,
        "models": {},
    }
    for name, model in models.items():
        if args.models and not any(m in name for m in args.models):
            continue
        instance = sample_instance(model["package"])
        from shipyard.export.package import load_package
        from shipyard.serve.reload import package_name

        served_name = package_name(load_package(model["package"]).manifest)  # as serve names it
        requests = {"json": json_request(instance), "binary": binary_request(instance, served_name)}
        limit = raw_limit(model["package"], instance)
        cases = serve_cases(
            home,
            model,
            requests,
            args.concurrency,
            args.duration,
            not args.no_prediction_log,
            args.cases,
        )
        report["models"][name] = {"raw_limit": limit, "cases": cases}
        print_table(name, limit, cases)
    # a filtered run must not replace the full run's record
    out = HERE / ("results-partial.json" if args.cases or args.models else "results.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{report['machine']}; JSON: {out}")


def print_table(
    name: str, limit: dict[str, Any], cases: dict[str, dict[int, dict[str, Any]]]
) -> None:
    print(f"\n### {name}\n")
    print(
        f"a) raw ONNX Runtime, best batch: {limit['rows_per_s']:,.0f} rows/s "
        f"(batch {limit['batch']}, {limit['threads']} thread(s))\n"
    )
    print("| case | clients | requests/s | p50 ms | p99 ms | errors | b/a | b/d |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    reference = cases.get("d) FastAPI + eager PyTorch")
    for label, levels in cases.items():
        for clients, r in levels.items():
            ratios = ("", "")
            if label.startswith("b"):
                ratios = (
                    f"{r['requests_per_s'] / limit['rows_per_s']:.2f}",
                    f"{r['requests_per_s'] / reference[clients]['requests_per_s']:.1f}x"
                    if reference
                    else "",
                )
            print(
                f"| {label} | {clients} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} | {ratios[0]} | {ratios[1]} |"
            )


if __name__ == "__main__":
    main()
