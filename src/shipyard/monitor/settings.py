"""The ``monitor:`` section of the config as typed settings, checked once per run.

Defaults here mirror ``conf/config.yaml`` so a config composed without the section (an
older experiment file, a test) still works; every mistake is one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from shipyard.config import to_container
from shipyard.errors import UserError

EMBEDDING_METHODS = ("model", "mmd", "distance", "ratio")


@dataclass(frozen=True)
class DriftSettings:
    """``monitor:`` keys of the config, checked once."""

    window: int
    min_rows: int
    max_rows: int
    drift_share: float
    num_method: str | None
    num_threshold: float | None
    cat_method: str | None
    cat_threshold: float | None
    columns: dict[str, dict[str, Any]]
    embedding_method: str
    embedding_threshold: float | None
    embedding_plot: bool
    reference_rows: int
    reference_seed: int
    keep_reports: int

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> DriftSettings:
        mon = to_container(cfg).get("monitor") or {}
        settings = cls(
            window=int(mon.get("window", 500)),
            min_rows=int(mon.get("min_rows", 100)),
            max_rows=int(mon.get("max_rows", 100_000)),
            drift_share=float(mon.get("drift_share", 0.5)),
            num_method=mon.get("num_method"),
            num_threshold=_optional_float(mon.get("num_threshold")),
            cat_method=mon.get("cat_method"),
            cat_threshold=_optional_float(mon.get("cat_threshold")),
            columns=dict(mon.get("columns") or {}),
            embedding_method=str(mon.get("embedding_method", "model")),
            embedding_threshold=_optional_float(mon.get("embedding_threshold")),
            embedding_plot=bool(mon.get("embedding_plot", False)),
            reference_rows=int(mon.get("reference_rows", 1000)),
            reference_seed=int(mon.get("reference_seed", 0)),
            keep_reports=int(mon.get("keep_reports", 10)),
        )
        settings._check()
        return settings

    def _check(self) -> None:
        if min(self.window, self.min_rows, self.max_rows, self.keep_reports) < 1:
            raise UserError(
                "monitor.window, min_rows, max_rows and keep_reports must be at least 1"
            )
        if not 0 < self.drift_share <= 1:
            raise UserError(f"monitor.drift_share must be in (0, 1], got {self.drift_share}")
        if self.embedding_method not in EMBEDDING_METHODS:
            raise UserError(
                f"unknown monitor.embedding_method {self.embedding_method!r}: choose one of "
                f"{', '.join(EMBEDDING_METHODS)}"
            )
        for name, spec in self.columns.items():
            if not isinstance(spec, dict) or set(spec) - {"method", "threshold"}:
                raise UserError(
                    f"monitor.columns.{name} must be a mapping with method and/or threshold, "
                    f"got {spec!r}"
                )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
