"""The text-serving benchmark's harness without a model: it starts (its helpers come from
bench_serving.py), builds the requests the server takes, and reports a refused case as an
error row instead of a throughput. The end-to-end run trains two transformers (minutes):
docs/benchmarks.md records a smoke run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serving" / "bench_text_serving.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_text_serving", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_the_cases() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--summarize-package", "--summarize-run", "--summarize-concurrency"):
        assert option in done.stdout


def test_requests_carry_one_text_as_predict_and_v2_bytes() -> None:
    requests = bench().text_requests("A real article.", "bbc_news", "text")
    assert requests["json"].path == "/predict"
    assert json.loads(requests["json"].body) == {"instances": ["A real article."]}
    v2 = json.loads(requests["v2"].body)
    assert requests["v2"].path == "/v2/models/bbc_news/infer"
    assert v2["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["A real article."]}
    ]
    assert v2["outputs"] == [{"name": "probabilities"}]
    assert "outputs" not in json.loads(bench().text_requests("x", "aclsum", "summarize")["v2"].body)


def test_table_shows_ratios_and_refused_cases(capsys: pytest.CaptureFixture[str]) -> None:
    level = {"requests_per_s": 4.0, "p50_ms": 250.0, "p99_ms": 400.0, "errors": 0}
    entry = {
        "raw_limit": {"rows_per_s": 8.0, "batch": 4, "threads": 1},
        "request_tokens": 128,
        "generated_tokens": {"mean": 22.8, "per_document": [24, 19], "limit": 31, "at_limit": 0},
        "cases": {
            "b) shipyard": {"error": "probe refused, not load-tested: HTTP 500: boom"},
            "b3) shipyard, V2 JSON BYTES": {"levels": {1: level}},
            "d) FastAPI + eager PyTorch": {"levels": {1: {**level, "requests_per_s": 2.0}}},
        },
    }
    bench().print_table("summariser", entry)
    out = capsys.readouterr().out
    assert "| b) shipyard | | | | | probe refused, not load-tested: HTTP 500: boom | | |" in out
    assert "| b3) shipyard, V2 JSON BYTES | 1 | 4.00 | 250.0 | 400.0 | 0 | 0.50 | 2.0x |" in out
    assert "mean 22.8" in out
