"""The model package's HTML report: what a reviewer looks at before promoting a version.

One self-contained file (images inlined, no scripts, no CDN): test metrics of PyTorch and
of each ONNX graph side by side, the confusion matrix, parity, latency and size per
graph (fp32 vs int8), the lineage chain snapshot -> run -> package -> registry version,
and the champion history when the registry is known. Torch-free: it reads only the
manifest and the files beside it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from shipyard.export.package import Manifest

TEMPLATE = "report.html.j2"
CONFUSION_MATRIX = "confusion_matrix.png"
REPORT = "report.html"


def render_report(
    manifest: Manifest, package_dir: Path, registry: dict[str, Any] | None = None
) -> str:
    """The report as HTML. ``registry``: ``name``, ``version``, ``aliases`` and ``history``
    (champion events), when the package is a registered version."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("shipyard.export", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
    )
    png = package_dir / CONFUSION_MATRIX
    title = (
        f"{registry['name']} v{registry['version']}"
        if registry
        else f"{manifest.task} model from run {manifest.lineage.run_id[:12]}"
    )
    return env.get_template(TEMPLATE).render(
        title=title,
        m=manifest,
        registry=registry,
        metric_names=_metric_names(manifest),
        # the graphs scored on the test split (a seq2seq package's encoder stands for its
        # whole decoding loop; its decoders carry no metrics of their own)
        scored=[g for g in manifest.graphs if g.metrics] or manifest.graphs[:1],
        batch_sizes=sorted({b for g in manifest.graphs for b in g.latency}),
        confusion_png=base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
        package_sha=manifest.graph("fp32").sha256,
        config_yaml=yaml.safe_dump(manifest.config, sort_keys=False),
        fmt=_fmt,
        shape=_shape,
    )


def write_report(
    manifest: Manifest, package_dir: Path, out: Path, registry: dict[str, Any] | None = None
) -> Path:
    """Render and write the report to ``out`` (staged, then renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.partial")
    staged.write_text(render_report(manifest, package_dir, registry), encoding="utf-8")
    staged.replace(out)
    return out


def _metric_names(manifest: Manifest) -> list[str]:
    """Metric names in a stable order: the test metrics first, then any a graph adds."""
    names = [k.removeprefix("test_") for k in manifest.metrics if k.startswith("test_")]
    for graph in manifest.graphs:
        names += [k for k in graph.metrics if k not in names]
    return names


def _shape(dims: list[int | None]) -> str:
    """``[batch, tokens, 64]``: the first dynamic axis is the batch, a later one a length."""
    names = ["batch" if i == 0 else "length" for i in range(len(dims))]
    return (
        "[" + ", ".join(n if d is None else str(d) for n, d in zip(names, dims, strict=True)) + "]"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
