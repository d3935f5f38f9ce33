"""The traffic scenarios on real data (scikit-learn's digits and wine), no model needed."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from shipyard.errors import UserError
from shipyard.monitor.scenarios import (
    SCENARIOS,
    ScenarioError,
    apply_scenario,
    scenarios_for,
)
from shipyard.tasks.base import DataKind


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return pixels[:300], bunch.target[:300].astype(np.int64)


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    return bunch.data.astype("float64"), bunch.target.to_numpy().astype(np.int64)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", SCENARIOS)
def test_images_keep_shape_dtype_and_range_and_leave_the_input_alone(
    images: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    pixels, labels = images
    before = pixels.copy()
    shifted, new_labels = apply_scenario(name, pixels, labels, kind=DataKind.IMAGE, rng=rng())
    assert isinstance(shifted, np.ndarray)
    assert shifted.shape == pixels.shape
    assert shifted.dtype == np.uint8
    assert len(new_labels) == len(labels)
    np.testing.assert_array_equal(pixels, before)  # a copy, never the caller's array
    if name == "clean":
        np.testing.assert_array_equal(shifted, pixels)
    elif name != "label-shift":
        assert not np.array_equal(shifted, pixels)
        np.testing.assert_array_equal(new_labels, labels)


def test_image_shifts_move_the_pixels_the_documented_way(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    pixels, labels = images
    bright, _ = apply_scenario("brightness", pixels, labels, kind="image", rng=rng())
    expected = np.clip(np.rint(pixels + 0.4 * (255.0 - pixels)), 0, 255)
    np.testing.assert_array_equal(bright, expected)
    negative, _ = apply_scenario("feature-shift", pixels, labels, kind="image", rng=rng())
    np.testing.assert_array_equal(negative, 255 - pixels)
    noisy, _ = apply_scenario("noise", pixels, labels, kind="image", rng=rng())
    residual = noisy.astype(float) - pixels
    middle = (pixels > 60) & (pixels < 195)  # away from clipping: plain Gaussian noise
    assert abs(residual[middle].std() - 40.0) < 3.0


@pytest.mark.parametrize("name", scenarios_for(DataKind.TABLE))
def test_tables_keep_columns_and_rows(table: tuple[pd.DataFrame, np.ndarray], name: str) -> None:
    frame, labels = table
    before = frame.copy()
    shifted, new_labels = apply_scenario(name, frame, labels, kind=DataKind.TABLE, rng=rng())
    assert isinstance(shifted, pd.DataFrame)
    assert list(shifted.columns) == list(frame.columns)
    assert len(shifted) == len(frame) == len(new_labels)
    pd.testing.assert_frame_equal(frame, before)
    if name == "clean":
        pd.testing.assert_frame_equal(shifted, frame)


def test_table_feature_shift_moves_half_the_columns_by_two_sigmas(
    table: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, labels = table
    shifted, _ = apply_scenario("feature-shift", frame, labels, kind="table", rng=rng())
    moved = math.ceil(len(frame.columns) / 2)
    for i, column in enumerate(frame.columns):
        delta = (shifted[column] - frame[column]).to_numpy()
        expected = 2.0 * frame[column].std() if i < moved else 0.0
        np.testing.assert_allclose(delta, expected, rtol=1e-9, atol=1e-9)


def test_table_noise_keeps_missing_values_missing(table: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, labels = table
    frame = frame.copy()
    frame.iloc[3, 0] = np.nan
    noisy, _ = apply_scenario("noise", frame, labels, kind="table", rng=rng())
    assert np.isnan(noisy.iloc[3, 0])
    assert noisy.iloc[:, 0].notna().sum() == len(frame) - 1


@pytest.mark.parametrize("kind", ["image", "table"])
def test_label_shift_skews_the_classes_and_labels_stay_true(
    images: tuple[np.ndarray, np.ndarray], table: tuple[pd.DataFrame, np.ndarray], kind: str
) -> None:
    features, labels = images if kind == "image" else table
    shifted, new_labels = apply_scenario("label-shift", features, labels, kind=kind, rng=rng(3))
    assert abs((new_labels == labels.min()).mean() - 0.9) < 0.05
    # every returned row is a real row with its own label
    if kind == "image":
        truth = {row.tobytes(): label for row, label in zip(features, labels, strict=True)}
        keys = [row.tobytes() for row in np.asarray(shifted)]
    else:
        truth = {tuple(r): lab for r, lab in zip(features.to_numpy(), labels, strict=True)}
        keys = [tuple(r) for r in np.asarray(shifted)]
    assert [truth[k] for k in keys] == new_labels.tolist()


def test_label_shift_of_a_numeric_target_favours_the_top_quarter() -> None:
    values = np.linspace(0.0, 100.0, 400)
    frame = pd.DataFrame({"x": values})
    _, target = apply_scenario("label-shift", frame, values, kind="table", rng=rng())
    assert (target >= np.quantile(values, 0.75)).mean() > 0.85


def test_same_seed_same_traffic(images: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = images
    for name in SCENARIOS:
        a = apply_scenario(name, pixels, labels, kind="image", rng=rng(7))
        b = apply_scenario(name, pixels, labels, kind="image", rng=rng(7))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_strength_zero_is_no_shift(images: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = images
    for name in ("noise", "brightness", "feature-shift"):
        shifted, _ = apply_scenario(name, pixels, labels, kind="image", rng=rng(), strength=0)
        np.testing.assert_array_equal(shifted, pixels)


def test_mistakes_are_one_line_errors_naming_the_choices(
    table: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, labels = table
    with pytest.raises(
        ScenarioError, match=r"choose one of clean, noise, feature-shift, label-shift"
    ):
        apply_scenario("brightness", frame, labels, kind="table", rng=rng())
    with pytest.raises(ValueError, match="unknown scenario 'drift': choose one of clean, noise, "):
        apply_scenario("drift", frame, labels, kind="table", rng=rng())
    with pytest.raises(UserError, match="strength"):
        apply_scenario("noise", frame, labels, kind="table", rng=rng(), strength=-1)
    with pytest.raises(UserError, match="one label per row"):
        apply_scenario("noise", frame, labels[:5], kind="table", rng=rng())
    with pytest.raises(
        ScenarioError, match="unknown data kind 'sound': choose one of image, table"
    ):
        apply_scenario("noise", frame, labels, kind="sound", rng=rng())


def test_scenarios_import_neither_torch_nor_evidently() -> None:
    """The simulator imports this module: it must stay light."""
    code = (
        "import sys; import shipyard.monitor.scenarios; "
        "heavy = [m for m in ('torch', 'evidently', 'lightning', 'sklearn') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_text_scenarios_shift_what_the_monitor_sees() -> None:
    """Typos keep the length and change letters; the feature shift cuts texts to their first
    words (at least three); labels and row counts stay."""
    from shipyard.monitor.scenarios import apply_scenario
    from shipyard.tasks.text import TextTask

    texts = [" ".join(f"word{i}" for i in range(40)), "short text here and there", ""]
    frame, labels = pd.DataFrame({"text": texts}), np.array([0, 1, 0])
    rng = np.random.default_rng(0)
    noisy, same = apply_scenario("noise", frame, labels, kind="text", rng=rng)
    assert [len(t) for t in noisy["text"]] == [len(t) for t in texts]
    assert noisy["text"][0] != texts[0]
    assert noisy["text"][2] == ""
    assert same.tolist() == labels.tolist()
    cut, _ = apply_scenario("feature-shift", frame, labels, kind="text", rng=rng)
    assert [len(t.split()) for t in cut["text"]] == [8, 3, 0]
    before = TextTask().monitor_features(frame["text"].tolist())
    after = TextTask().monitor_features(cut["text"].tolist())
    assert after["words"].iloc[0] < before["words"].iloc[0]
    clean, _ = apply_scenario("clean", frame, labels, kind="text", rng=rng)
    assert clean["text"].tolist() == texts
