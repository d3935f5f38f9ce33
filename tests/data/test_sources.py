"""Data sources as a user meets them: real files written by the test, read into snapshots.

Images are written with PIL, tables with pandas, Hugging Face datasets are loaded from
local files through the real ``datasets.load_dataset``; nothing touches the network.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from PIL import Image

from shipyard.data.prepare import prepare
from shipyard.data.snapshot import SnapshotStore
from shipyard.data.sources import load_source
from shipyard.errors import ConfigError, DataError, UserError
from shipyard.tasks.base import DataKind, OutputKind

Compose = Callable[..., DictConfig]
Cli = Callable[..., subprocess.CompletedProcess[str]]


# -- helpers ---------------------------------------------------------------------------


def pixels(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A smooth, seeded picture (gradients plus noise), so that resizing is meaningful."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = (ys * 255 // max(height - 1, 1) + xs * 97 // max(width - 1, 1) + seed * 31) % 256
    layers = [(base + rng.integers(0, 40, base.shape) + 60 * c) % 256 for c in range(channels)]
    return np.stack(layers, axis=-1).astype(np.uint8)


def save_image(path: Path, *, size: tuple[int, int], mode: str, seed: int) -> None:
    """Write an image of (height, width) ``size`` in a PIL ``mode``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    rgb = Image.fromarray(pixels(height, width, 3, seed))
    image = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
    image.save(path)


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(40, 40, 3, seed)).save(buffer, format="JPEG")
    return buffer.getvalue()


# Per class: different sizes, modes and formats, as a scraped image folder has.
VARIED = [
    ("a.png", (20, 24), "RGB"),
    ("b.png", (33, 17), "L"),
    ("c.png", (16, 16), "RGBA"),
    ("d.jpg", (40, 30), "RGB"),
    ("e.gif", (12, 28), "P"),
    ("f.jpeg", (25, 25), "L"),
]


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    """root/<class>/<images>: ``per_class`` good images of varied size, mode and format."""
    for class_index, name in enumerate(classes):
        for index in range(per_class):
            filename, size, mode = VARIED[index % len(VARIED)]
            stem, suffix = filename.split(".")
            save_image(
                root / name / f"{stem}{index}.{suffix}",
                size=size,
                mode=mode,
                seed=class_index * 100 + index,
            )
    return root


def add_bad_files(root: Path) -> list[str]:
    """A truncated JPEG and a text file: the files a real folder has by accident."""
    (root / "cat" / "truncated.jpg").write_bytes(jpeg_bytes(7)[:300])
    (root / "dog" / "notes.txt").write_text("not an image\n")
    return ["cat/truncated.jpg", "dog/notes.txt"]


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    assert isinstance(exc.value, UserError)
    return message


def assert_cli_user_error(result: subprocess.CompletedProcess[str], expected: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


def store_files(home: Path) -> list[Path]:
    """Every file in the default snapshot store (staging included)."""
    root = home / "snapshots"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# -- bundled sources -------------------------------------------------------------------


def test_digits_are_uint8_nhwc_images_with_ten_labels(compose: Compose) -> None:
    dataset = load_source(compose("task=image").data)
    assert dataset.kind is DataKind.IMAGE
    assert dataset.features.dtype == np.uint8
    assert dataset.features.shape == (1797, 8, 8, 1)
    assert dataset.features.max() == 255  # rescaled from 0..16
    assert dataset.labels == [str(n) for n in range(10)]
    assert dataset.output_kind is OutputKind.CLASSES
    assert dataset.target.dtype == np.int64
    assert set(np.unique(dataset.target)) == set(range(10))


def test_wine_is_a_numeric_table_with_three_cultivars(compose: Compose) -> None:
    dataset = load_source(compose("task=tabular").data)
    assert dataset.kind is DataKind.TABLE
    assert dataset.features.shape == (178, 13)
    assert "alcohol" in dataset.features.columns
    assert dataset.labels == ["class_0", "class_1", "class_2"]
    assert np.bincount(dataset.target).tolist() == [59, 71, 48]


# -- image folder ----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_reads_resizes_and_skips_unreadable_files(
    compose: Compose, tmp_path: Path, channels: int
) -> None:
    root = image_folder(tmp_path / "pets")
    bad = add_bad_files(root)
    cfg = compose(
        "task=image",
        "data=folder",
        f"data.path={root}",
        "data.image_size=[16,12]",
        f"data.channels={channels}",
    )
    with pytest.warns(UserWarning, match=r"skipped 2 of 14 files .*the manifest lists them"):
        result = prepare(cfg)

    manifest = result.snapshot.manifest
    assert manifest["rows"] == 12
    assert manifest["skipped"]["count"] == 2
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]["files"]}
    assert sorted(skipped) == bad
    assert "corrupt image" in skipped["cat/truncated.jpg"]
    assert skipped["dog/notes.txt"] == "not an image PIL can read"
    assert manifest["source"] == {"name": "folder", "path": str(root.resolve()), "files": 14}
    assert manifest["schema"]["features"] == {
        "kind": "image",
        "height": 16,
        "width": 12,
        "channels": channels,
        "dtype": "uint8",
    }
    assert manifest["schema"]["target"]["labels"] == ["cat", "dog"]
    train = result.snapshot.load("train")
    assert train.features.dtype == np.uint8
    assert train.features.shape[1:] == (16, 12, channels)
    assert train.features.std() > 10  # real pictures, not blank arrays
    assert result.summary()["skipped"] == 2


def test_folder_resizes_each_image_from_its_own_pixels(compose: Compose, tmp_path: Path) -> None:
    root = tmp_path / "shades"
    # Flat images of one known grey level per file: resizing must keep the level.
    for name, level in (("dark", 30), ("light", 220)):
        for index, (height, width) in enumerate([(10, 10), (50, 20), (7, 31), (64, 64), (3, 90)]):
            path = root / name / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((height, width), level, np.uint8)).save(path)
    cfg = compose("task=image", "data=folder", f"data.path={root}", "data.image_size=[8,8]")
    dataset = load_source(cfg.data)
    assert dataset.features.shape == (10, 8, 8, 3)
    for image, label in zip(dataset.features, dataset.target, strict=True):
        expected = 30 if dataset.labels[label] == "dark" else 220
        assert np.all(image == expected)
    assert dataset.skipped == []


def test_folder_scales_16_bit_greyscale_instead_of_clipping(
    compose: Compose, tmp_path: Path
) -> None:
    root = tmp_path / "scans"
    for name, level in (("low", 0x1000), ("high", 0xC000)):
        for index in range(5):
            path = root / name / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 12), level, np.uint16)).save(path)
    cfg = compose(
        "task=image", "data=folder", f"data.path={root}", "data.image_size=[4,4]", "data.channels=1"
    )
    dataset = load_source(cfg.data)
    levels = {
        dataset.labels[t]: int(img.mean())
        for img, t in zip(dataset.features, dataset.target, strict=True)
    }
    assert levels == {"low": 0x10, "high": 0xC0}


def test_folder_ignores_hidden_files_and_folders(compose: Compose, tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets", per_class=5)
    save_image(
        root / "cat" / ".ipynb_checkpoints" / "a0-checkpoint.png", size=(9, 9), mode="RGB", seed=1
    )
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    save_image(root / ".trash" / "x.png", size=(9, 9), mode="RGB", seed=2)  # not a class
    cfg = compose("task=image", "data=folder", f"data.path={root}", "data.image_size=[8,8]")
    with pytest.warns(UserWarning, match="skipped 2 of 12"):
        dataset = load_source(cfg.data)
    assert len(dataset) == 10
    assert dataset.labels == ["cat", "dog"]
    assert {s["file"]: s["reason"] for s in dataset.skipped} == {
        "cat/.ipynb_checkpoints/a0-checkpoint.png": "hidden file",
        "dog/.DS_Store": "hidden file",
    }


def test_folder_of_only_bad_files_is_a_data_error(compose: Compose, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    add_bad_files(root)
    cfg = compose("task=image", "data=folder", f"data.path={root}", "data.image_size=[8,8]")
    with pytest.raises(DataError) as exc:
        prepare(cfg)
    message = one_line(exc)
    assert "no readable images" in message
    assert "skipped 2 of 2" in message
    assert SnapshotStore(str(cfg.paths.snapshots)).list() == []


def test_folder_of_only_bad_files_via_cli_exits_2_and_writes_nothing(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "broken"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    add_bad_files(root)
    result = cli("data", "prepare", "task=image", "data=folder", f"data.path={root}")
    assert_cli_user_error(result, "has no readable images")
    assert store_files(home) == []
    assert not (home / "snapshots" / ".tmp").exists() or not any(
        (home / "snapshots" / ".tmp").iterdir()
    )


def test_folder_prepare_via_cli_warns_in_one_line_and_succeeds(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    root = image_folder(tmp_path / "pets")
    add_bad_files(root)
    result = cli(
        "data",
        "prepare",
        "task=image",
        "data=folder",
        f"data.path={root}",
        "data.image_size=[8,8]",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 12
    assert summary["skipped"] == 2
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "skipped 2 of 14 files" in warnings[0]
    assert (home / "snapshots" / summary["snapshot_id"] / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: None, "does not exist: pass data.path=FOLDER"),
        (lambda root: root.write_text("x"), "is not a folder"),
        (lambda root: root.mkdir(), "has no class sub-folders: expected"),
        (
            lambda root: (root / "empty").mkdir(parents=True),
            "has no readable images: there are no files to read",
        ),
        (
            lambda root: image_folder(root, classes=("only",)),
            "readable images of 1 class (only): need at least two classes",
        ),
    ],
    ids=["missing", "a-file", "no-class-folders", "empty-class-folder", "one-class"],
)
def test_unusable_folders_are_one_line_data_errors(
    compose: Compose, tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    root = tmp_path / "images"
    make(root)
    cfg = compose("task=image", "data=folder", f"data.path={root}", "data.image_size=[8,8]")
    with pytest.raises(DataError) as exc:
        load_source(cfg.data)
    assert expected in one_line(exc)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.image_size=[8]", "data.image_size must be [height, width]"),
        ("data.image_size=[0,8]", "data.image_size must be [height, width]"),
        ("data.channels=2", "data.channels must be 1 (greyscale) or 3 (RGB)"),
    ],
)
def test_bad_image_settings_are_config_errors(
    compose: Compose, tmp_path: Path, override: str, expected: str
) -> None:
    root = image_folder(tmp_path / "pets", per_class=1)
    cfg = compose("task=image", "data=folder", f"data.path={root}", override)
    with pytest.raises(ConfigError) as exc:
        load_source(cfg.data)
    assert expected in one_line(exc)


def test_folder_without_path_names_the_key(compose: Compose) -> None:
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        load_source(compose("task=image", "data=folder").data)


# -- tables ----------------------------------------------------------------------------


def table_frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.normal(10, 2, rows)
    weight = rng.normal(50, 5, rows)
    return pd.DataFrame(
        {
            "size": size,
            "weight": weight,
            "count": rng.integers(0, 5, rows),
            "species": np.where(size > 10, "large", "small"),
            "price": (size * 3.5 + weight * 0.25).round(3),
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_with_a_named_text_target_becomes_classes(
    compose: Compose, tmp_path: Path, fmt: str
) -> None:
    frame = table_frame()
    path = tmp_path / f"fish.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    cfg = compose("task=tabular", f"data={fmt}", f"data.path={path}", "data.target=species")
    result = prepare(cfg)
    manifest = result.snapshot.manifest
    assert manifest["source"] == {"name": "table", "path": str(path), "format": fmt}
    assert manifest["schema"]["target"] == {
        "name": "species",
        "kind": "classes",
        "labels": ["large", "small"],
    }
    assert [c["name"] for c in manifest["schema"]["features"]["columns"]] == [
        "size",
        "weight",
        "count",
        "price",
    ]
    loaded = pd.concat([result.snapshot.load(s).features for s in ("train", "val", "test")])
    assert len(loaded) == 60
    assert set(loaded.dtypes) == {np.dtype("float64")}
    assert sorted(loaded["size"]) == pytest.approx(sorted(frame["size"]))


def test_table_format_follows_the_file_suffix_when_unset(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "fish.pq"
    table_frame().to_parquet(path)
    cfg = compose(
        "task=tabular", "data=csv", f"data.path={path}", "data.target=species", "data.format=null"
    )
    assert load_source(cfg.data).source["format"] == "parquet"


def test_float_target_is_a_regression_with_target_stats(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "fish.csv"
    table_frame().drop(columns="species").to_csv(path, index=False)
    result = prepare(compose("task=tabular", "data=csv", f"data.path={path}", "data.target=price"))
    manifest = result.snapshot.manifest
    assert manifest["schema"]["target"] == {"name": "price", "kind": "number", "labels": None}
    for info in manifest["splits"].values():
        assert "class_balance" not in info
        stats = info["target_stats"]
        assert stats["min"] <= stats["mean"] <= stats["max"]
        assert stats["std"] > 0
    target = result.snapshot.load("train").target
    assert target.dtype == np.float32
    assert result.summary()["splits"] == {"train": 42, "val": 9, "test": 9}


def test_target_type_classes_and_number_override_auto(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "fish.csv"
    table_frame().drop(columns="species").to_csv(path, index=False)
    base = ("task=tabular", "data=csv", f"data.path={path}")
    auto = load_source(compose(*base, "data.target=count").data)
    assert auto.output_kind is OutputKind.CLASSES  # few distinct integers
    assert auto.labels == ["0", "1", "2", "3", "4"]
    number = load_source(compose(*base, "data.target=count", "data.target_type=number").data)
    assert number.output_kind is OutputKind.NUMBER
    assert number.target.dtype == np.float32


def test_target_type_classes_on_strings_and_number_on_strings(
    compose: Compose, tmp_path: Path
) -> None:
    path = tmp_path / "fish.csv"
    table_frame().to_csv(path, index=False)
    base = ("task=tabular", "data=csv", f"data.path={path}", "data.target=species")
    classes = load_source(compose(*base, "data.target_type=classes").data)
    assert classes.labels == ["large", "small"]
    assert set(np.unique(classes.target)) == {0, 1}
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.target_type=number").data)
    assert "use data.target_type=classes" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.target_type=clases").data)
    assert "must be classes, number, text or auto" in one_line(exc)


def test_missing_feature_values_are_allowed(compose: Compose, tmp_path: Path) -> None:
    frame = table_frame()
    frame.loc[[3, 10, 40], "weight"] = np.nan
    path = tmp_path / "gaps.csv"
    frame.to_csv(path, index=False)
    result = prepare(
        compose("task=tabular", "data=csv", f"data.path={path}", "data.target=species")
    )
    loaded = pd.concat([result.snapshot.load(s).features for s in ("train", "val", "test")])
    assert int(loaded["weight"].isna().sum()) == 3
    assert result.snapshot.manifest["rows"] == 60


def test_feature_subset(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "fish.csv"
    table_frame().to_csv(path, index=False)
    base = ("task=tabular", "data=csv", f"data.path={path}", "data.target=species")
    dataset = load_source(compose(*base, "data.features=[weight,size]").data)
    assert list(dataset.features.columns) == ["weight", "size"]
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.features=[weight,colour]").data)
    assert "feature columns not found: colour" in one_line(exc)


@pytest.mark.parametrize(
    ("frame", "target", "error", "expected"),
    [
        (
            table_frame(),
            "kind",
            DataError,
            "target column 'kind' not found; columns are: size, weight, count, species, price",
        ),
        (
            table_frame(),
            "price",
            DataError,
            "feature columns must be numeric; not numeric: species",
        ),
        (
            table_frame().assign(species="small"),
            "species",
            DataError,
            "target column 'species' has a single class (['small']): need at least two",
        ),
        (table_frame(rows=9), "species", DataError, "has 9 usable rows: need at least 10"),
        (
            table_frame().assign(species=lambda f: f["species"].where(f.index % 7 != 0)),
            "species",
            DataError,
            "target column 'species' has 9 missing values",
        ),
        (table_frame()[["species"]], "species", DataError, "no feature columns"),
    ],
    ids=["no-target", "text-feature", "one-class", "few-rows", "missing-target", "only-target"],
)
def test_unusable_tables_are_one_line_data_errors(
    compose: Compose,
    tmp_path: Path,
    frame: pd.DataFrame,
    target: str,
    error: type[Exception],
    expected: str,
) -> None:
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    cfg = compose("task=tabular", "data=csv", f"data.path={path}", f"data.target={target}")
    with pytest.raises(error) as exc:
        prepare(cfg)
    assert expected in one_line(exc)
    assert SnapshotStore(str(cfg.paths.snapshots)).list() == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("size,weight,species\n", "the table has no rows, only the columns size, weight, species"),
        ("", "is empty: expected a header row"),
        ("\n\n", "is empty: expected a header row"),
    ],
    ids=["header-only", "zero-bytes", "blank-lines"],
)
def test_empty_csv_is_a_clear_data_error(
    compose: Compose, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    cfg = compose("task=tabular", "data=csv", f"data.path={path}", "data.target=species")
    with pytest.raises(DataError) as exc:
        load_source(cfg.data)
    assert expected in one_line(exc)


def test_empty_parquet_is_a_clear_data_error(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    table_frame().iloc[:0].to_parquet(path)
    cfg = compose("task=tabular", "data=parquet", f"data.path={path}", "data.target=species")
    with pytest.raises(DataError) as exc:
        load_source(cfg.data)
    assert "the table has no rows" in one_line(exc)


def test_unreadable_table_files_are_data_errors(compose: Compose, tmp_path: Path) -> None:
    parquet = tmp_path / "really.parquet"
    table_frame().to_parquet(parquet)
    base = ("task=tabular", "data=csv", "data.target=species")
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, f"data.path={tmp_path / 'nope.csv'}").data)
    assert "does not exist: pass data.path=FILE" in one_line(exc)
    with pytest.raises(DataError) as exc:  # Parquet bytes read as CSV
        load_source(compose(*base, f"data.path={parquet}").data)
    assert f"cannot read '{parquet}' as csv" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_source(compose(*base, f"data.path={parquet}", "data.format=xlsx").data)
    assert "data.format must be one of csv, parquet, not 'xlsx'" in one_line(exc)


def test_table_target_missing_via_cli_exits_2_listing_the_columns(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "fish.csv"
    table_frame().to_csv(path, index=False)
    result = cli(
        "data", "prepare", "task=tabular", "data=csv", f"data.path={path}", "data.target=kind"
    )
    line = assert_cli_user_error(result, "target column 'kind' not found")
    assert "size, weight, count, species, price" in line
    assert store_files(home) == []


def test_table_source_for_the_image_task_is_refused(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "fish.csv"
    table_frame().to_csv(path, index=False)
    cfg = compose("task=image", "data=csv", f"data.path={path}", "data.target=species")
    with pytest.raises(DataError) as exc:
        prepare(cfg)
    assert "task 'image' needs image data but source 'table' gives table data" in one_line(exc)


# -- Hugging Face datasets -------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the ``datasets`` cache of this test in its own temporary folder."""
    import datasets.config

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.usefixtures("hf_cache")
def test_huggingface_file_builder_reads_a_table(compose: Compose, tmp_path: Path, fmt: str) -> None:
    frame = table_frame()
    path = tmp_path / f"fish.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    cfg = compose(
        "task=tabular",
        "data=huggingface",
        f"data.name={fmt}",
        f"data.data_files={path}",
        "data.target=species",
    )
    result = prepare(cfg)
    manifest = result.snapshot.manifest
    assert manifest["source"]["name"] == "huggingface"
    assert manifest["source"]["dataset"] == fmt
    assert manifest["schema"]["target"]["labels"] == ["large", "small"]
    assert manifest["rows"] == 60
    # The same file through the table source makes the same snapshot.
    table = prepare(
        compose("task=tabular", f"data={fmt}", f"data.path={path}", "data.target=species")
    )
    assert table.snapshot.id == result.snapshot.id
    assert table.reused


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_class_label_target_keeps_its_names(compose: Compose, tmp_path: Path) -> None:
    import datasets

    frame = table_frame()
    hf = datasets.Dataset.from_pandas(
        frame.drop(columns="species").assign(label=(frame["size"] > 10).astype(int))
    )
    hf = hf.cast_column("label", datasets.ClassLabel(names=["minnow", "whale"]))
    path = tmp_path / "labelled.parquet"
    hf.to_parquet(path)  # the features (ClassLabel names) travel in the Parquet metadata
    cfg = compose(
        "task=tabular", "data=huggingface", "data.name=parquet", f"data.data_files={path}"
    )
    dataset = load_source(cfg.data)
    assert dataset.target_name == "label"
    assert dataset.labels == ["minnow", "whale"]
    assert np.bincount(dataset.target).tolist() == [
        int((frame["size"] <= 10).sum()),
        int((frame["size"] > 10).sum()),
    ]


def imagefolder_layout(root: Path) -> Path:
    """An ``imagefolder`` dataset: root/train/<class>/<images>, PNG and JPEG mixed."""
    for class_index, name in enumerate(("circle", "square")):
        for index in range(6):
            suffix = "png" if index % 2 else "jpg"
            save_image(
                root / "train" / name / f"{index}.{suffix}",
                size=(18 + index, 22),
                mode="RGB",
                seed=class_index * 10 + index,
            )
    return root


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_imagefolder_with_data_files(compose: Compose, tmp_path: Path) -> None:
    root = imagefolder_layout(tmp_path / "shapes")
    (root / "train" / "circle" / "broken.jpg").write_bytes(jpeg_bytes(3)[:250])
    cfg = compose(
        "task=image",
        "data=huggingface",
        "data.name=imagefolder",
        f"data.data_files={root / 'train'}/**",
        "data.image_column=image",
        "data.target=label",
        "data.image_size=[10,10]",
        "data.channels=1",
    )
    with pytest.warns(UserWarning, match="skipped 1 of 13 rows"):
        result = prepare(cfg)
    manifest = result.snapshot.manifest
    assert manifest["rows"] == 12
    assert manifest["schema"]["target"]["labels"] == ["circle", "square"]
    assert manifest["schema"]["features"]["channels"] == 1
    assert manifest["skipped"]["count"] == 1
    assert manifest["skipped"]["files"][0]["file"].endswith("broken.jpg")
    assert "corrupt image" in manifest["skipped"]["files"][0]["reason"]
    train = result.snapshot.load("train")
    assert train.features.shape[1:] == (10, 10, 1)
    assert train.features.dtype == np.uint8


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_local_folder_matches_the_folder_source(
    compose: Compose, tmp_path: Path
) -> None:
    root = imagefolder_layout(tmp_path / "shapes")
    size = ("data.image_size=[12,12]", "data.channels=3")
    hf = load_source(
        compose(
            "task=image", "data=huggingface", f"data.name={root}", "data.image_column=image", *size
        ).data
    )
    folder = load_source(
        compose("task=image", "data=folder", f"data.path={root / 'train'}", *size).data
    )
    assert hf.labels == folder.labels == ["circle", "square"]
    assert hf.features.shape == folder.features.shape == (12, 12, 12, 3)
    # Same files, same decoding: the same pixels for the same class, whatever the row order.
    for label in range(2):
        hf_images = sorted(img.tobytes() for img in hf.features[hf.target == label])
        folder_images = sorted(img.tobytes() for img in folder.features[folder.target == label])
        assert hf_images == folder_images


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_image_column_of_file_paths(compose: Compose, tmp_path: Path) -> None:
    root = imagefolder_layout(tmp_path / "shapes")
    files = sorted((root / "train").rglob("*.*"))
    listing = pd.DataFrame(
        {"file": [str(f) for f in files], "shape": [f.parent.name for f in files]}
    )
    listing.loc[len(listing)] = [str(root / "gone.png"), "circle"]  # a file that is not there
    listing.to_csv(tmp_path / "listing.csv", index=False)
    cfg = compose(
        "task=image",
        "data=huggingface",
        "data.name=csv",
        f"data.data_files={tmp_path / 'listing.csv'}",
        "data.image_column=file",
        "data.target=shape",
        "data.image_size=[8,8]",
    )
    with pytest.warns(UserWarning, match="skipped 1 of 13 rows"):
        dataset = load_source(cfg.data)
    assert len(dataset) == 12
    assert dataset.labels == ["circle", "square"]
    assert dataset.skipped[0]["file"] == str(root / "gone.png")


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(14, 10, 3, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_images_embedded_as_bytes(compose: Compose, tmp_path: Path) -> None:
    import datasets

    blobs = [png_bytes(seed) for seed in range(12)]
    blobs[5] = b"not a png"
    hf = datasets.Dataset.from_dict({"picture": blobs, "label": [0, 1] * 6})
    hf = hf.cast_column("label", datasets.ClassLabel(names=["even", "odd"]))
    path = tmp_path / "embedded.parquet"
    hf.to_parquet(path)
    cfg = compose(
        "task=image",
        "data=huggingface",
        "data.name=parquet",
        f"data.data_files={path}",
        "data.image_column=picture",
        "data.image_size=[7,5]",
    )
    with pytest.warns(UserWarning, match="skipped 1 of 12 rows"):
        dataset = load_source(cfg.data)
    assert dataset.features.shape == (11, 7, 5, 3)
    assert dataset.labels == ["even", "odd"]
    assert np.bincount(dataset.target).tolist() == [6, 5]
    assert dataset.skipped == [{"file": "row 5", "reason": "not an image PIL can read"}]


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_rows_without_a_label_are_an_error_not_the_last_class(
    compose: Compose, tmp_path: Path
) -> None:
    import datasets

    labels = [0, 1] * 6
    labels[3] = -1  # ClassLabel's "no label"
    hf = datasets.Dataset.from_dict({"image": [png_bytes(s) for s in range(12)], "label": labels})
    hf = hf.cast_column("label", datasets.ClassLabel(names=["even", "odd"]))
    path = tmp_path / "unlabelled.parquet"
    hf.to_parquet(path)
    cfg = compose(
        "task=image",
        "data=huggingface",
        "data.name=parquet",
        f"data.data_files={path}",
        "data.image_column=image",
    )
    with pytest.raises(DataError) as exc:
        load_source(cfg.data)
    assert "target column 'label' has 1 missing values" in one_line(exc)


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_mistakes_are_one_line_data_errors(compose: Compose, tmp_path: Path) -> None:
    root = imagefolder_layout(tmp_path / "shapes")
    base = ("task=image", "data=huggingface", f"data.name={root}")
    with pytest.raises(DataError) as exc:
        load_source(compose(*base).data)  # image dataset, but no image_column
    assert "column 'image' holds images: set data.image_column=image" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.image_column=picture").data)
    assert "image column 'picture' not in the dataset; columns are: image, label" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.image_column=image", "data.target=kind").data)
    assert "target column 'kind' not in the dataset" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.image_column=label").data)
    assert "column 'label' does not hold images" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(compose(*base, "data.image_column=image", "data.split=test").data)
    assert f"cannot load Hugging Face dataset '{root}'" in one_line(exc)
    with pytest.raises(DataError) as exc:
        load_source(
            compose(
                "task=tabular",
                "data=huggingface",
                "data.name=csv",
                f"data.data_files={tmp_path / 'missing.csv'}",
            ).data
        )
    assert "cannot load Hugging Face dataset 'csv'" in one_line(exc)


@pytest.mark.usefixtures("hf_cache")
def test_huggingface_malformed_csv_is_a_data_error(compose: Compose, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('size,label\n1,a\n"unterminated,b\n')
    cfg = compose("task=tabular", "data=huggingface", "data.name=csv", f"data.data_files={path}")
    with pytest.raises(DataError) as exc:
        load_source(cfg.data)
    assert "cannot load Hugging Face dataset 'csv'" in one_line(exc)


def test_unknown_source_is_a_config_error(compose: Compose) -> None:
    cfg = compose("task=image", "data.source=nope")
    with pytest.raises(ConfigError) as exc:
        load_source(cfg.data)
    assert (
        "unknown data source 'nope': choose one of aclsum, bbc_news, digits, folder, huggingface, "
        "table, text_folder, text_table, wine" in one_line(exc)
    )
