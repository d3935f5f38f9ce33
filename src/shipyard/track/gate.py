"""The promotion gate: what a model version must show before it becomes the champion.

A version becomes the model that ``serve`` loads only through these checks, each a row
of the table that ``shipyard promote`` prints:

* **integrity** — the package downloads and every file matches its SHA-256 (and the
  manifest matches the digest recorded at registration). Never overridable: ``--force``
  exists to accept a worse or slower model on purpose, never to serve bytes nobody tested.
* **parity** — PyTorch and ONNX Runtime agreed on the test split within
  ``export.parity_tolerance``.
* **latency** — the fp32 graph's p95 at ``registry.gate.latency_batch_size`` rows fits
  ``registry.gate.max_latency_ms`` (as measured at export).
* **compatibility** — same task, output kind, labels and input as the champion, so
  callers keep working and the metrics are comparable.
* **metric** — the primary test metric is not worse than the champion's by more than
  ``registry.gate.metric_tolerance``, measured on the *candidate's* test split: when the
  candidate was trained on a different snapshot, the champion's graph is re-scored on it.

The checks read packages only (no registry calls), so they are testable on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig

from shipyard.errors import UserError
from shipyard.export.package import Manifest, ModelPackage


@dataclass(frozen=True)
class Check:
    """One row of the gate: its name, whether it passed, and the numbers behind it."""

    name: str
    passed: bool
    detail: str
    #: False only for integrity, which ``--force`` never overrides
    overridable: bool = True

    def summary(self) -> dict[str, Any]:
        return asdict(self)


class GateRefused(UserError):
    """The gate refused a promotion; ``checks`` holds every row, so the CLI can show why."""

    def __init__(self, message: str, checks: list[Check]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass(frozen=True)
class Contender:
    """A version in the gate: its number and its verified package (None if it did not verify)."""

    version: int
    package: ModelPackage | None
    error: str | None = None


def integrity(version: int, load: Callable[[], ModelPackage]) -> tuple[Check, Contender]:
    """Run ``load`` (download + checksum verification) and turn its outcome into a check."""
    try:
        package = load()
    except UserError as exc:
        return Check("integrity", False, str(exc), overridable=False), Contender(
            version, None, str(exc)
        )
    files = len(package.manifest.graphs) + len(package.manifest.files) + 1
    detail = f"{files} files match their SHA-256 (manifest included)"
    return Check("integrity", True, detail, overridable=False), Contender(version, package)


def run_gate(
    cfg: DictConfig, integrity_check: Check, candidate: Contender, champion: Contender | None
) -> list[Check]:
    """Every check for ``candidate`` against the current ``champion`` (None: there is none)."""
    checks = [integrity_check]
    if candidate.package is None:
        return checks  # nothing else can be read from a package that does not verify
    manifest = candidate.package.manifest
    checks += [parity(cfg, manifest), latency(cfg, manifest)]
    if champion is None:
        checks += [
            Check("compatibility", True, "no champion yet: nothing to be compatible with"),
            Check("metric", True, "first champion: nothing to compare with"),
        ]
        return checks
    if champion.package is None:
        detail = f"cannot compare: champion v{champion.version} does not verify ({champion.error})"
        return [*checks, Check("compatibility", False, detail), Check("metric", False, detail)]
    compatible = compatibility(manifest, champion)
    checks.append(compatible)
    if compatible.passed:
        checks.append(metric(cfg, candidate.package, champion))
    else:
        checks.append(Check("metric", False, f"not comparable with champion v{champion.version}"))
    return checks


def parity(cfg: DictConfig, manifest: Manifest) -> Check:
    report = manifest.parity
    tolerance = float(cfg.export.parity_tolerance)
    within = report.max_abs_diff <= tolerance
    passed = report.passed and report.labels_equal and within
    if report.sequences_equal is not None:  # generated text: equal greedy summaries
        outcome = f"{report.sequences_equal:.1%} of greedy summaries equal"
    else:
        outcome = f"predicted labels {'identical' if report.labels_equal else 'differ'}"
    detail = (
        f"max |PyTorch - ONNX| {report.max_abs_diff:.1e} {'<=' if within else '>'} {tolerance:.0e} "
        f"over {report.rows} test rows; {outcome}"
    )
    if not report.passed:
        detail += "; the export's own parity check failed"
    return Check("parity", passed, detail)


def latency(cfg: DictConfig, manifest: Manifest) -> Check:
    budget = cfg.registry.gate.max_latency_ms
    batch = int(cfg.registry.gate.latency_batch_size)
    if budget is None:
        return Check("latency", True, "no budget (registry.gate.max_latency_ms: null)")
    graph = next((g for g in manifest.graphs if g.precision == "fp32"), None)
    measured = graph.latency.get(batch) if graph is not None else None
    if graph is None or measured is None:
        have = sorted(graph.latency) if graph is not None else []
        return Check(
            "latency",
            False,
            f"no fp32 latency measured at batch size {batch} (measured: "
            f"{', '.join(map(str, have)) or 'none'}): re-export with {batch} in "
            "export.latency.batch_sizes, or set registry.gate.latency_batch_size",
        )
    passed = measured.p95_ms <= float(budget)
    detail = (
        f"fp32 p95 {measured.p95_ms:.3f} ms at batch {batch} {'<=' if passed else '>'} "
        f"budget {float(budget):g} ms ({graph.threads} thread(s), measured at export)"
    )
    return Check("latency", passed, detail)


def compatibility(manifest: Manifest, champion: Contender) -> Check:
    """Same task, output kind, labels and input spec: a champion swap must not break callers."""
    assert champion.package is not None
    theirs = champion.package.manifest
    differences = [
        f"{what} {mine!r} vs champion's {other!r}"
        for what, mine, other in (
            ("task", manifest.task, theirs.task),
            ("output kind", manifest.output_kind, theirs.output_kind),
            ("labels", manifest.labels, theirs.labels),
            ("input dtype", manifest.input.dtype, theirs.input.dtype),
            ("input shape", manifest.input.shape, theirs.input.shape),
            ("input columns", manifest.input.columns, theirs.input.columns),
        )
        if mine != other
    ]
    if differences:
        return Check(
            "compatibility",
            False,
            f"not comparable with champion v{champion.version}: " + "; ".join(differences),
        )
    return Check(
        "compatibility",
        True,
        f"same task, output kind, labels and input as champion v{champion.version}",
    )


def metric(cfg: DictConfig, candidate: ModelPackage, champion: Contender) -> Check:
    """The primary test metric against the champion's, on the candidate's test split."""
    from shipyard.tasks.base import OutputKind, primary_metric

    assert champion.package is not None
    mine, theirs = candidate.manifest, champion.package.manifest
    name, goal = primary_metric(OutputKind(mine.output_kind))
    key = f"test_{name}"
    snapshot_id = mine.lineage.snapshot_id
    if key not in mine.metrics:
        return Check("metric", False, f"the candidate's manifest has no {key}: re-export it")
    if snapshot_id == theirs.lineage.snapshot_id:
        if key not in theirs.metrics:
            return Check("metric", False, f"champion v{champion.version} has no {key}")
        own, other = mine.metrics[key], theirs.metrics[key]
        where = f"same test split (snapshot {snapshot_id})"
    else:
        try:
            other = rescore(champion.package, mine, name)
        except (UserError, OSError, KeyError, ValueError) as exc:
            return Check(
                "metric",
                False,
                f"cannot re-score champion v{champion.version} on snapshot {snapshot_id}: {exc}",
            )
        # ONNX against ONNX on the same rows: the candidate's fp32 graph score.
        own = mine.graph("fp32").metrics.get(name, mine.metrics[key])
        where = (
            f"candidate's test split (snapshot {snapshot_id}); champion v{champion.version} "
            f"(trained on {theirs.lineage.snapshot_id}) re-scored on it"
        )
    tolerance = float(cfg.registry.gate.metric_tolerance)
    worse = own < other - tolerance if goal == "max" else own > other + tolerance
    better = "higher" if goal == "max" else "lower"
    detail = (
        f"{key} {own:.4f} vs champion v{champion.version} {other:.4f} ({better} is better, "
        f"tolerance {tolerance:g}) on the {where}"
    )
    return Check("metric", not worse, detail)


def rescore(champion: ModelPackage, candidate: Manifest, metric_name: str) -> float:
    """The champion's fp32 graph scored on the candidate's test split (same metric code)."""
    from shipyard.data.snapshot import SnapshotStore
    from shipyard.export.scoring import score_onnx

    snapshot = SnapshotStore(candidate.lineage.snapshot_store).get(candidate.lineage.snapshot_id)
    scores = score_onnx(
        champion.graph_path("fp32"),
        candidate.task,
        snapshot.load("test"),
        snapshot.manifest["schema"],
    )
    return float(scores[metric_name])


def refusal_message(name: str, version: int, checks: list[Check], forced: bool) -> str:
    """One line: which checks failed and what the user can do about it."""
    failed = [c for c in checks if not c.passed]
    names = ", ".join(c.name for c in failed)
    if any(not c.overridable for c in failed):
        return (
            f"the gate refused {name} v{version}: {names} failed; a package that does not "
            "verify is never promoted, not even with --force: re-export and register it again"
        )
    hint = (
        "" if forced else f"; to override: shipyard promote {name} {version} --force --reason TEXT"
    )
    return f"the gate refused {name} v{version}: {names} failed{hint}"
