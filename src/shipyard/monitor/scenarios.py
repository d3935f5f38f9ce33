"""Traffic scenarios: realistic shifts of a test split, so a user (and the tests) can watch
the monitor notice them.

Each scenario is a pure function of the rows it is given, the data kind and a seeded
generator: the drift simulator (``shipyard simulate``) sends its output to a server, and the
monitor's tests write it straight into a prediction log. Both sides therefore shift data
the same way, and a figure such as "noise is flagged within 200 rows" means the same thing
in the docs, the tests and a user's terminal.

NumPy and pandas only (no torch, no Evidently): the simulator imports this module.

Images are uint8 pixel arrays shaped (rows, height, width, channels), 0..255, as the image
task's snapshot stores them; tables are DataFrames of named numeric columns; texts are
DataFrames with a ``text`` column. Every
scenario returns copies (the input is never modified) with as many rows as it was given,
and images stay uint8 in 0..255.

``strength`` scales every shift (1.0: the documented default; 0: no shift, except that
``label-shift`` still resamples, with the skew scaled down).

* ``clean`` — the rows unchanged: the control that must raise no drift flag.
* ``noise`` — additive Gaussian noise: images get sigma = 40 x strength pixel levels
  (clipped to 0..255, so a black background turns grey: a failing sensor); tables get,
  per numeric column, sigma = 3 x strength x the column's standard deviation (missing
  values stay missing): a broken sensor or a column filled from the wrong source. A change
  of spread alone is hard for a drift test to see in few rows; at 27 rows (the wine test
  split) the monitor's K-S tests need about this much (docs/monitoring.md).
* ``brightness`` — images only: each pixel moves 40 % x strength of the way towards white
  (``p + 0.4 * s * (255 - p)``), an over-exposed camera. Tables have no brightness: asking
  for it raises :class:`ScenarioError`.
* ``feature-shift`` — tables: the first half of the numeric columns (at least one; in
  column order, so every call shifts the same ones) move by +2 x strength standard
  deviations, as when an upstream unit or pipeline changes. Images: the polarity flips
  (``(1 - s) * p + s * (255 - p)``, full negatives at strength 1), as when a scanner
  starts delivering white-on-black.
* texts (``task=text``): ``noise`` replaces 15 % x strength of the letters with random ones
  (typos, OCR); ``feature-shift`` cuts each text to its first 20 % of words at strength 1
  (at least three): a client that sends headlines instead of articles.
* ``label-shift`` — prior shift: rows are resampled with replacement so that the first
  class present (the lowest class index: digit 0, wine class_0) makes up
  ``0.5 + 0.4 x strength`` of the rows (90 % at strength 1) instead of its share, as when
  one kind of customer floods in. Each row keeps its true label: the inputs are real, only
  the mix changes. For a numeric target the rows at or above its 75th percentile take that
  share.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from shipyard.errors import UserError
from shipyard.tasks.base import DataKind

SCENARIOS: tuple[str, ...] = ("clean", "noise", "brightness", "feature-shift", "label-shift")
#: the scenarios that make sense for each kind of data
APPLIES_TO: dict[DataKind, tuple[str, ...]] = {
    DataKind.IMAGE: SCENARIOS,
    DataKind.TABLE: ("clean", "noise", "feature-shift", "label-shift"),
    DataKind.TEXT: ("clean", "noise", "feature-shift", "label-shift"),
}

IMAGE_NOISE_SIGMA = 40.0  # pixel levels (0..255) at strength 1
TABLE_NOISE_SIGMAS = 3.0  # column standard deviations at strength 1
BRIGHTEN_TOWARDS_WHITE = 0.4  # share of the way to 255 at strength 1
FEATURE_SHIFT_SIGMAS = 2.0  # column standard deviations at strength 1
FEATURE_SHIFT_SHARE = 0.5  # share of the numeric columns that move
LABEL_SHIFT_BASE = 0.5  # share of the favoured rows at strength 0 ...
LABEL_SHIFT_PER_STRENGTH = 0.4  # ... plus this much per unit of strength (capped below 1)
TEXT_TYPO_RATE = 0.15  # share of the letters replaced at strength 1
TEXT_KEPT_WORDS = 0.2  # share of the words a feature-shifted text keeps at strength 1
TEXT_MIN_WORDS = 3

Features = np.ndarray | pd.DataFrame


class ScenarioError(UserError, ValueError):
    """An unknown scenario, one that does not apply to this kind of data, or a bad strength.

    Both a :class:`UserError` (the CLI prints one line and exits 2) and a ``ValueError``
    (what a library caller expects from a bad argument)."""


def scenarios_for(kind: DataKind | str) -> tuple[str, ...]:
    """The scenarios that apply to ``kind`` (images: all of them; tables: no brightness)."""
    return APPLIES_TO[DataKind(kind)]


def check_scenario(name: str) -> None:
    """A one-line :class:`ScenarioError` for a name that is not a scenario (callers check
    before loading any data)."""
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")


def apply_scenario(
    name: str,
    features: Features,
    labels: np.ndarray,
    *,
    kind: DataKind | str,
    rng: np.random.Generator,
    strength: float = 1.0,
) -> tuple[Features, np.ndarray]:
    """Shifted copies of ``features`` and ``labels`` (same row count); see the module doc."""
    check_scenario(name)
    try:
        data_kind = DataKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in DataKind)
        raise ScenarioError(f"unknown data kind {kind!r}: choose one of {kinds}") from None
    if name not in APPLIES_TO[data_kind]:
        raise ScenarioError(
            f"scenario {name!r} does not apply to {data_kind.value} data: choose one of "
            f"{', '.join(APPLIES_TO[data_kind])}"
        )
    if not math.isfinite(strength) or strength < 0:
        raise ScenarioError(f"scenario strength must be a finite number >= 0, got {strength}")
    labels = np.asarray(labels)
    if len(labels) != len(features):
        raise ScenarioError(
            f"features have {len(features)} rows but labels {len(labels)}: give one label per row"
        )
    if data_kind is DataKind.IMAGE:
        images = np.asarray(features)
        if images.ndim != 4:
            raise ScenarioError(
                f"images must be shaped (rows, height, width, channels), got {images.shape}"
            )
        if name == "label-shift":
            index = _label_shift_index(labels, rng, strength)
            return images[index].copy(), labels[index].copy()
        return _shift_images(name, images, rng, strength), labels.copy()
    if not isinstance(features, pd.DataFrame):
        raise ScenarioError(
            f"{data_kind.value} features must be a pandas DataFrame, got {type(features).__name__}"
        )
    if name == "label-shift":
        index = _label_shift_index(labels, rng, strength)
        return features.iloc[index].reset_index(drop=True), labels[index].copy()
    if data_kind is DataKind.TEXT:
        return _shift_texts(name, features, rng, strength), labels.copy()
    return _shift_table(name, features, rng, strength), labels.copy()


# -- texts --------------------------------------------------------------------------------


def _shift_texts(name: str, frame: pd.DataFrame, rng: np.random.Generator, s: float) -> Any:
    """``noise``: typos, a share of the letters replaced by random ones (OCR or a noisy
    source); ``feature-shift``: each text cut to its first words (a client that starts
    sending headlines instead of articles)."""
    shifted = frame.copy()
    if name == "clean" or "text" not in frame.columns:
        return shifted
    texts = [str(t) for t in frame["text"].tolist()]
    out: list[str] = []
    if name == "noise":
        rate = min(TEXT_TYPO_RATE * s, 1.0)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        for text in texts:
            if not text:
                out.append(text)
                continue
            chars = np.array(list(text))
            hit = (rng.random(len(chars)) < rate) & np.char.isalpha(chars)
            chars[hit] = rng.choice(letters, size=int(hit.sum()))
            out.append("".join(chars.tolist()))
    else:
        keep = max(0.0, 1.0 - (1.0 - TEXT_KEPT_WORDS) * min(s, 1.0))
        for text in texts:
            words = text.split()
            count = max(TEXT_MIN_WORDS, round(keep * len(words)))
            out.append(" ".join(words[:count]))
    shifted["text"] = out
    return shifted


# -- images -------------------------------------------------------------------------------


def _shift_images(name: str, images: np.ndarray, rng: np.random.Generator, s: float) -> Any:
    pixels = images.astype(np.float64)
    if name == "clean":
        return images.copy()
    if name == "noise":
        pixels = pixels + rng.normal(0.0, IMAGE_NOISE_SIGMA * s, size=pixels.shape)
    elif name == "brightness":
        pixels = pixels + BRIGHTEN_TOWARDS_WHITE * s * (255.0 - pixels)
    else:  # feature-shift: towards the negative
        weight = min(s, 1.0)
        pixels = (1.0 - weight) * pixels + weight * (255.0 - pixels)
    return np.clip(np.rint(pixels), 0, 255).astype(images.dtype)


# -- tables -------------------------------------------------------------------------------


def _numeric_columns(frame: pd.DataFrame) -> list[Any]:
    return [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]


def _scale(column: pd.Series) -> float:
    """A column's spread: its standard deviation, else its magnitude, else 1 — so a
    constant column or a single row still moves."""
    std = float(column.std(skipna=True)) if column.notna().sum() > 1 else float("nan")
    if math.isfinite(std) and std > 0:
        return std
    magnitude = float(column.abs().mean(skipna=True)) if column.notna().any() else float("nan")
    return 0.1 * magnitude if math.isfinite(magnitude) and magnitude > 0 else 1.0


def _shift_table(name: str, frame: pd.DataFrame, rng: np.random.Generator, s: float) -> Any:
    shifted = frame.copy()
    numeric = _numeric_columns(frame)
    if name == "clean" or not numeric:
        return shifted
    if name == "noise":
        for column in numeric:
            values = frame[column].astype(np.float64)
            noise = rng.normal(0.0, TABLE_NOISE_SIGMAS * s * _scale(values), size=len(frame))
            shifted[column] = values + noise  # NaN + noise stays NaN
        return shifted
    count = max(1, math.ceil(FEATURE_SHIFT_SHARE * len(numeric)))
    for column in numeric[:count]:
        values = frame[column].astype(np.float64)
        shifted[column] = values + FEATURE_SHIFT_SIGMAS * s * _scale(values)
    return shifted


# -- label shift --------------------------------------------------------------------------


def _label_shift_index(labels: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Row indices drawn with replacement so that the favoured rows make up the skewed share."""
    rows = len(labels)
    if rows == 0:
        return np.arange(0)
    if np.issubdtype(labels.dtype, np.floating):
        finite = labels[np.isfinite(labels)]
        cut = np.quantile(finite, 0.75) if len(finite) else np.inf
        favoured = np.isfinite(labels) & (labels >= cut)
    else:
        present = np.unique(labels)
        favoured = labels == present[0]
    if favoured.all() or not favoured.any():
        return rng.choice(rows, size=rows, replace=True)
    share = min(LABEL_SHIFT_BASE + LABEL_SHIFT_PER_STRENGTH * s, 0.99)
    weights = np.where(favoured, share / favoured.sum(), (1.0 - share) / (~favoured).sum())
    return rng.choice(rows, size=rows, replace=True, p=weights / weights.sum())
