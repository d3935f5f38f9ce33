"""The package report renders every section from a manifest, escaped and self-contained."""

from __future__ import annotations

import re
from pathlib import Path

from shipyard.export.package import (
    GraphSpec,
    Latency,
    Lineage,
    Manifest,
    ParityReport,
    TensorSpec,
)
from shipyard.export.report import render_report, write_report

# A 1x1 PNG: the report must inline whatever image the package holds.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def manifest(labels: list[str], passed: bool = True) -> Manifest:
    latency = {1: Latency(p50_ms=0.05, p95_ms=0.08, rows_per_s=20000.0)}
    return Manifest(
        task="image",
        output_kind="classes",
        labels=labels,
        input=TensorSpec(name="features", dtype="float32", shape=[None, 8, 8, 1]),
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[None, len(labels)])],
        graphs=[
            GraphSpec(
                file="model.onnx",
                sha256="a" * 64,
                bytes=40960,
                metrics={"accuracy": 0.975},
                latency=latency,
            ),
            GraphSpec(
                file="model.int8.onnx",
                precision="int8",
                sha256="b" * 64,
                bytes=12288,
                metrics={"accuracy": 0.9712},
                latency={8: Latency(p50_ms=0.2, p95_ms=0.3, rows_per_s=40000.0)},
            ),
        ],
        metrics={"test_accuracy": 0.975, "test_macro_f1": 0.97},
        parity=ParityReport(
            rows=270, max_abs_diff=3.2e-7, labels_equal=passed, tolerance=1e-4, passed=passed
        ),
        lineage=Lineage(run_id="run123456789abc", snapshot_id="snap42", snapshot_store="/s"),
        config={"model": {"name": "cnn", "lr": 0.001}},
        shipyard_version="0.1.0",
    )


def test_report_shows_metrics_parity_latency_lineage_and_history(tmp_path: Path) -> None:
    (tmp_path / "confusion_matrix.png").write_bytes(PNG)
    registry = {
        "name": "digits",
        "version": 3,
        "aliases": ["champion"],
        "history": [
            {
                "at": "2026-11-24T10:00:00",
                "action": "promote",
                "version": 3,
                "previous": 2,
                "by": "ana",
                "reason": "retrained on November data",
                "forced": True,
            },
        ],
    }
    html = render_report(manifest(["cat", "dog"]), tmp_path, registry)

    assert "<title>digits v3</title>" in html
    assert "0.9750" in html
    assert "0.9712" in html
    assert "3.20e-07" in html
    assert ">passed<" in html
    assert "40.0 KB" in html
    assert "12.0 KB" in html
    assert "0.050 / 0.080" in html  # fp32 at batch 1
    assert "snap42" in html
    assert "run123456789abc" in html
    assert "digits v3" in html
    assert "retrained on November data" in html
    assert "promote (forced)" in html
    assert "data:image/png;base64," in html
    assert "lr: 0.001" in html  # the resolved config


def test_report_escapes_labels_and_loads_nothing_from_the_network(tmp_path: Path) -> None:
    html = render_report(manifest(["<script>alert(1)</script>", "b"], passed=False), tmp_path)

    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert ">failed<" in html
    assert "data:image/png" not in html  # no confusion matrix in this package: no section
    assert not re.search(r"""(src|href)=["']?https?:""", html)


def test_write_report_replaces_the_file_in_one_rename(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "r.html"
    write_report(manifest(["a", "b"]), tmp_path, out)
    first = out.read_text()
    write_report(manifest(["a", "c"]), tmp_path, out)

    assert out.read_text() != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.html"]
