"""``prepare``: source -> fixed splits -> content-addressed snapshot with its manifest and
drift reference, on real stores under the test's own home."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from PIL import Image

from shipyard import __version__
from shipyard.data.prepare import prepare, split_dataset
from shipyard.data.snapshot import ID_LENGTH, SPLITS, SnapshotStore
from shipyard.data.sources import load_source
from shipyard.errors import ConfigError, DataError

Compose = Callable[..., DictConfig]

IMAGE_MONITOR = ["brightness", "contrast", "dark_share", "bright_share"]
RGB_MONITOR = [*IMAGE_MONITOR, "red_mean", "green_mean", "blue_mean"]


def write_table(path: Path, rows: int = 80, seed: int = 0) -> pd.DataFrame:
    """A table with a unique ``row`` feature, so that every split row can be traced."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "row": np.arange(rows),
            "x": rng.normal(size=rows),
            "y": rng.normal(size=rows),
            "grade": np.repeat(["a", "b", "c", "d"], rows // 4),
            "score": rng.normal(100, 15, rows),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def write_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (10, 14, 3), dtype=np.uint8)
            pixels[..., 0 if name == "red" else 2] += 180
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


# -- identity: the same data gives the same snapshot --------------------------------------


def test_same_source_twice_is_one_snapshot_reused(compose: Compose) -> None:
    cfg = compose("task=image")
    first, second = prepare(cfg), prepare(cfg)
    assert not first.reused
    assert second.reused
    assert second.snapshot.id == first.snapshot.id
    assert second.snapshot.manifest == first.snapshot.manifest  # the stored one, untouched
    assert second.summary() == {**first.summary(), "reused": True}
    assert len(SnapshotStore(str(cfg.paths.snapshots)).list()) == 1


def test_a_different_split_seed_is_a_different_snapshot(compose: Compose) -> None:
    first = prepare(compose("task=tabular"))
    other = prepare(compose("task=tabular", "data.split_seed=1"))
    assert not other.reused
    assert other.snapshot.id != first.snapshot.id
    assert other.snapshot.manifest["split"]["seed"] == 1
    store = SnapshotStore(str(compose("task=tabular").paths.snapshots))
    assert {m["id"] for m in store.list()} == {first.snapshot.id, other.snapshot.id}


def test_the_id_depends_on_content_not_on_where_the_files_are(
    compose: Compose, tmp_path: Path
) -> None:
    first = write_folder(tmp_path / "one" / "colours")
    second = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, second)
    a = prepare(compose("task=image", "data=folder", f"data.path={first}", "data.image_size=[8,8]"))
    b = prepare(
        compose("task=image", "data=folder", f"data.path={second}", "data.image_size=[8,8]")
    )
    assert b.snapshot.id == a.snapshot.id
    assert b.reused
    # Different pixels (another size) are different content.
    c = prepare(
        compose("task=image", "data=folder", f"data.path={second}", "data.image_size=[9,8]")
    )
    assert c.snapshot.id != a.snapshot.id


def test_what_the_target_means_is_part_of_the_id(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path)
    frame.assign(level=np.arange(len(frame)) % 3).to_csv(path, index=False)
    base = (
        "task=tabular",
        "data=csv",
        f"data.path={path}",
        "data.target=level",
        "data.features=[x,y]",
    )
    as_classes = prepare(compose(*base))
    as_number = prepare(compose(*base, "data.target_type=number"))
    assert as_classes.snapshot.manifest["schema"]["target"]["kind"] == "classes"
    assert as_number.snapshot.manifest["schema"]["target"]["kind"] == "number"
    assert as_number.snapshot.id != as_classes.snapshot.id


# -- splits --------------------------------------------------------------------------------


def test_splits_are_disjoint_complete_stratified_and_seeded(
    compose: Compose, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    write_table(path, rows=200)
    cfg = compose("task=tabular", "data=csv", f"data.path={path}", "data.target=grade")
    result = prepare(cfg)
    loaded = {name: result.snapshot.load(name) for name in SPLITS}
    rows = {name: set(split.features["row"].astype(int)) for name, split in loaded.items()}
    assert sum(len(r) for r in rows.values()) == 200
    assert set().union(*rows.values()) == set(range(200))
    assert {len(r) for r in rows.values()} == {140, 30}
    manifest = result.snapshot.manifest
    assert {name: info["rows"] for name, info in manifest["splits"].items()} == {
        "train": 140,
        "val": 30,
        "test": 30,
    }
    # Stratified: 50 rows per grade split 35/7-8/7-8.
    for name, info in manifest["splits"].items():
        balance = info["class_balance"]
        assert sum(balance.values()) == info["rows"]
        assert max(balance.values()) - min(balance.values()) <= 1, (name, balance)
        assert np.bincount(loaded[name].target, minlength=4).tolist() == list(balance.values())
    # Seeded: splitting again gives the same rows in the same order.
    again = split_dataset(load_source(cfg.data), cfg.data)
    for name in SPLITS:
        pd.testing.assert_frame_equal(again[name].features, loaded[name].features)


def test_small_classes_are_split_without_stratification(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path, rows=40)
    frame.assign(grade=["rare"] * 2 + ["common"] * 38).to_csv(path, index=False)
    cfg = compose("task=tabular", "data=csv", f"data.path={path}", "data.target=grade")
    result = prepare(cfg)
    assert sum(info["rows"] for info in result.snapshot.manifest["splits"].values()) == 40
    assert (
        sum(info["class_balance"]["rare"] for info in result.snapshot.manifest["splits"].values())
        == 2
    )


@pytest.mark.parametrize(
    "fractions",
    [
        ("data.val_fraction=0", "data.test_fraction=0.2"),
        ("data.val_fraction=0.5", "data.test_fraction=0.5"),
        ("data.val_fraction=0.2", "data.test_fraction=1.5"),
    ],
)
def test_bad_split_fractions_are_config_errors(
    compose: Compose, fractions: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        prepare(compose("task=tabular", *fractions))
    assert "must be in (0, 1) and sum below 1" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_fractions_that_leave_no_training_rows_are_a_data_error(
    compose: Compose, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    write_table(path, rows=12)
    cfg = compose(
        "task=tabular",
        "data=csv",
        f"data.path={path}",
        "data.target=grade",
        "data.features=[x,y]",
        "data.val_fraction=0.45",
        "data.test_fraction=0.5",
    )
    with pytest.raises(DataError) as exc:
        prepare(cfg)
    assert "too few to keep any for training after 6 validation and 6 test rows" in str(exc.value)


def test_task_and_source_must_agree(compose: Compose) -> None:
    with pytest.raises(DataError) as exc:
        prepare(compose("task=tabular", "data=digits"))
    assert "task 'tabular' needs table data but source 'digits' gives image data" in str(exc.value)
    assert SnapshotStore(str(compose("task=tabular").paths.snapshots)).list() == []


# -- manifest ------------------------------------------------------------------------------


def assert_common_manifest(manifest: dict[str, object], task: str) -> None:
    digest = str(manifest["hash"])
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64
    assert manifest["id"] == digest[len("sha256:") :][:ID_LENGTH]
    created = dt.datetime.fromisoformat(str(manifest["created_at"]))
    assert created.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(minutes=5)
    assert manifest["created_by"] == {"shipyard": __version__}
    assert manifest["task"] == task
    assert manifest["skipped"] == {"count": 0, "files": []}
    assert manifest["reference"] == {
        "rows": manifest["reference"]["rows"],  # type: ignore[index]
        "path": "reference/features.parquet",
    }


def test_image_manifest_and_reference(compose: Compose) -> None:
    result = prepare(compose("task=image", "data.reference_rows=300"))
    manifest = result.snapshot.manifest
    assert_common_manifest(manifest, "image")
    assert manifest["kind"] == "image"
    assert manifest["source"] == {"name": "digits", "origin": "sklearn.datasets.load_digits"}
    assert manifest["rows"] == 1797
    assert manifest["schema"] == {
        "features": {"kind": "image", "height": 8, "width": 8, "channels": 1, "dtype": "uint8"},
        "target": {"name": "digit", "kind": "classes", "labels": [str(n) for n in range(10)]},
    }
    assert manifest["split"] == {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 0}
    assert manifest["data_config"]["source"] == "digits"
    assert sum(info["rows"] for info in manifest["splits"].values()) == 1797
    for info in manifest["splits"].values():
        assert list(info["class_balance"]) == [str(n) for n in range(10)]
        assert sum(info["class_balance"].values()) == info["rows"]
    assert manifest["reference"]["rows"] == 300

    reference = result.snapshot.reference()
    assert list(reference.columns) == [*IMAGE_MONITOR, "target"]
    assert len(reference) == 300
    assert reference[IMAGE_MONITOR].dtypes.eq(np.float64).all()
    assert reference["brightness"].between(0, 1).all()
    assert reference["contrast"].gt(0).all()
    assert set(reference["target"]) <= set(range(10))
    # Drawn from the training split: every reference row's brightness is a training image's.
    train = result.snapshot.load("train")
    train_brightness = train.features.reshape(len(train), -1).mean(axis=1) / 255
    assert set(np.round(reference["brightness"], 5)) <= set(np.round(train_brightness, 5))
    assert result.snapshot.labels == [str(n) for n in range(10)]


def test_rgb_reference_has_channel_means(compose: Compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "colours")
    result = prepare(
        compose("task=image", "data=folder", f"data.path={root}", "data.image_size=[6,6]")
    )
    reference = result.snapshot.reference()
    assert list(reference.columns) == [*RGB_MONITOR, "target"]
    assert len(reference) == result.snapshot.manifest["splits"]["train"]["rows"]
    labels = result.snapshot.labels
    assert labels == ["blue", "red"]
    red = reference[reference["target"] == labels.index("red")]
    blue = reference[reference["target"] == labels.index("blue")]
    assert (red["red_mean"] > red["blue_mean"]).all()
    assert (blue["blue_mean"] > blue["red_mean"]).all()


def test_table_manifest_and_reference(compose: Compose) -> None:
    result = prepare(compose("task=tabular"))
    manifest = result.snapshot.manifest
    assert_common_manifest(manifest, "tabular")
    assert manifest["kind"] == "table"
    assert manifest["rows"] == 178
    columns = [c["name"] for c in manifest["schema"]["features"]["columns"]]
    assert len(columns) == 13
    assert columns[0] == "alcohol"
    assert {c["dtype"] for c in manifest["schema"]["features"]["columns"]} == {"float64"}
    assert manifest["schema"]["target"] == {
        "name": "cultivar",
        "kind": "classes",
        "labels": ["class_0", "class_1", "class_2"],
    }
    assert {name: info["class_balance"] for name, info in manifest["splits"].items()} == {
        "train": {"class_0": 41, "class_1": 49, "class_2": 34},
        "val": {"class_0": 9, "class_1": 11, "class_2": 7},
        "test": {"class_0": 9, "class_1": 11, "class_2": 7},
    }
    reference = result.snapshot.reference()
    assert list(reference.columns) == [*columns, "target"]
    assert manifest["reference"]["rows"] == len(reference) == 124  # the whole training split
    train = result.snapshot.load("train")
    pd.testing.assert_frame_equal(reference[columns], train.features)
    np.testing.assert_array_equal(reference["target"].to_numpy(), train.target)


def test_reference_is_a_seeded_sample_of_the_training_split(compose: Compose) -> None:
    first = prepare(compose("task=tabular", "data.reference_rows=40")).snapshot.reference()
    again = prepare(compose("task=tabular", "data.reference_rows=40")).snapshot.reference()
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 40
    train = prepare(compose("task=tabular")).snapshot.load("train").features
    merged = first.drop(columns="target").merge(train, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_regression_manifest_has_target_stats(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path)
    result = prepare(
        compose(
            "task=tabular",
            "data=csv",
            f"data.path={path}",
            "data.target=score",
            "data.features=[x,y]",
        )
    )
    manifest = result.snapshot.manifest
    assert manifest["schema"]["target"] == {"name": "score", "kind": "number", "labels": None}
    assert result.snapshot.labels is None
    assert [c["name"] for c in manifest["schema"]["features"]["columns"]] == ["x", "y"]
    for name, info in manifest["splits"].items():
        target = result.snapshot.load(name).target.astype(np.float64)
        assert info["target_stats"] == pytest.approx(
            {"mean": target.mean(), "std": target.std(), "min": target.min(), "max": target.max()}
        )
    assert manifest["splits"]["train"]["target_stats"]["min"] >= frame["score"].min() - 1e-4
    reference = result.snapshot.reference()
    assert list(reference.columns) == ["x", "y", "target"]
    assert reference["target"].dtype == np.float32
