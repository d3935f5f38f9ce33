"""Data sources by name (``data.source``): each reads rows into a :class:`Dataset`.

* ``digits`` / ``wine`` — scikit-learn's bundled data, no network (the defaults).
* ``folder`` — an image folder with one sub-folder per class.
* ``table`` — a CSV or Parquet file with a named target column.
* ``huggingface`` — anything ``datasets.load_dataset`` reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from shipyard.config import require
from shipyard.console import track
from shipyard.data.dataset import Dataset, encode_target
from shipyard.errors import ConfigError, DataError
from shipyard.tasks.base import DataKind, OutputKind

# Images larger than this many pixels are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000


def load_source(data_cfg: DictConfig) -> Dataset:
    """Read the rows that ``data_cfg`` names. Raises :class:`DataError` for unusable data."""
    name = data_cfg.source
    try:
        reader = SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"unknown data source {name!r}: choose one of {', '.join(sorted(SOURCES))}"
        ) from None
    dataset = reader(data_cfg)
    if len(dataset) == 0:
        raise DataError(f"the {name} source gave no usable rows: nothing to snapshot")
    return dataset


def read_digits(data_cfg: DictConfig) -> Dataset:
    """scikit-learn's 8x8 digits, pixel values 0..16 rescaled to 0..255 like any image."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return Dataset(
        kind=DataKind.IMAGE,
        features=images,
        target=bunch.target.astype(np.int64),
        target_name="digit",
        output_kind=OutputKind.CLASSES,
        labels=[str(n) for n in bunch.target_names],
        source={"name": "digits", "origin": "sklearn.datasets.load_digits"},
    )


def read_wine(data_cfg: DictConfig) -> Dataset:
    """scikit-learn's wine recognition data: 13 numeric features, 3 cultivars."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    return Dataset(
        kind=DataKind.TABLE,
        features=bunch.data.reset_index(drop=True),
        target=bunch.target.to_numpy().astype(np.int64),
        target_name="cultivar",
        output_kind=OutputKind.CLASSES,
        labels=[str(n) for n in bunch.target_names],
        source={"name": "wine", "origin": "sklearn.datasets.load_wine"},
    )


def read_folder(data_cfg: DictConfig) -> Dataset:
    """Images under ``path/<class>/``; unreadable files are skipped and reported."""
    from pathlib import Path

    require(data_cfg, "path")
    root = Path(str(data_cfg.path)).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {str(root)!r} does not exist: pass data.path=FOLDER with one sub-folder per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder {str(root)!r} has no class sub-folders: expected {root}/<class>/<image files>"
        )
    height, width = _image_size(data_cfg)
    mode = _mode(data_cfg)
    files = [
        (index, f)
        for index, d in enumerate(class_dirs)
        for f in sorted(d.rglob("*"))
        if f.is_file()
    ]
    images: list[np.ndarray] = []
    target: list[int] = []
    skipped: list[dict[str, str]] = []
    for class_index, path in track(files, description=f"Reading images from {root.name}"):
        relative = str(path.relative_to(root))
        if path.name.startswith("."):
            skipped.append({"file": relative, "reason": "hidden file"})
            continue
        try:
            images.append(_decode_image(path.read_bytes(), mode, (width, height)))
            target.append(class_index)
        except ValueError as exc:
            skipped.append({"file": relative, "reason": str(exc)})
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} of {len(files)} files that are not readable images "
            f"(first: {skipped[0]['file']}: {skipped[0]['reason']}); the manifest lists them",
            stacklevel=2,
        )
    labels = [d.name for d in class_dirs]
    shape = (0, height, width, 3 if mode == "RGB" else 1)
    return Dataset(
        kind=DataKind.IMAGE,
        features=np.stack(images) if images else np.zeros(shape, np.uint8),
        target=np.asarray(target, dtype=np.int64),
        target_name="class",
        output_kind=OutputKind.CLASSES,
        labels=labels,
        source={"name": "folder", "path": str(root.resolve()), "files": len(files)},
        skipped=skipped,
    )


def _image_size(data_cfg: DictConfig) -> tuple[int, int]:
    size = list(data_cfg.get("image_size") or [])
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"data.image_size must be [height, width] in pixels, got {size}")
    return int(size[0]), int(size[1])


def _mode(data_cfg: DictConfig) -> str:
    channels = data_cfg.get("channels", 3)
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    return "L" if channels == 1 else "RGB"


def _decode_image(blob: bytes, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode, convert and resize one image; ValueError says why a file is unusable."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image too large ({image.width}x{image.height})")
            image.load()
            converted = image.convert(mode).resize(size, Image.Resampling.BILINEAR)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt image ({exc})") from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[..., np.newaxis] if array.ndim == 2 else array


def read_table(data_cfg: DictConfig) -> Dataset:
    """A CSV or Parquet file (local path or fsspec URL) with a named target column."""
    import fsspec
    import pandas as pd

    require(data_cfg, "path", "target")
    path = str(data_cfg.path)
    fmt = data_cfg.get("format") or ("parquet" if path.endswith((".parquet", ".pq")) else "csv")
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        raise DataError(f"table file {path!r} does not exist: pass data.path=FILE")
    try:
        with fs.open(fs_path, "rb") as handle:
            frame = pd.read_parquet(handle) if fmt == "parquet" else pd.read_csv(handle)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path!r} as {fmt}: {str(exc).splitlines()[0]}") from exc
    return _table_dataset(frame, data_cfg, {"name": "table", "path": path, "format": fmt})


def _table_dataset(frame: Any, data_cfg: DictConfig, source: dict[str, Any]) -> Dataset:
    import pandas as pd

    target = str(data_cfg.target)
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} not found; columns are: {', '.join(map(str, frame.columns))} "
            "(set data.target=COLUMN)"
        )
    wanted = data_cfg.get("features")
    features = [str(c) for c in (wanted if wanted else frame.columns) if str(c) != target]
    unknown = [c for c in features if c not in frame.columns]
    if unknown:
        raise DataError(f"feature columns not found: {', '.join(unknown)}")
    if not features:
        raise DataError("no feature columns: the table has only the target column")
    table = frame[features]
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise DataError(
            f"feature columns must be numeric; not numeric: {', '.join(non_numeric)} "
            "(encode them, or leave them out with data.features=[...])"
        )
    encoded, kind, labels = encode_target(
        frame[target], target, str(data_cfg.get("target_type", "auto"))
    )
    return Dataset(
        kind=DataKind.TABLE,
        features=table.astype("float64").reset_index(drop=True),
        target=encoded,
        target_name=target,
        output_kind=kind,
        labels=labels,
        source=source,
    )


def read_huggingface(data_cfg: DictConfig) -> Dataset:
    """Rows from ``datasets.load_dataset`` (the Hub, a local folder or a file builder)."""
    import datasets

    require(data_cfg, "name")
    source = {
        "name": "huggingface",
        "dataset": str(data_cfg.name),
        "config_name": data_cfg.get("config_name"),
        "split": str(data_cfg.get("split", "train")),
        "revision": data_cfg.get("revision"),
    }
    data_files = data_cfg.get("data_files")
    try:
        loaded = datasets.load_dataset(
            str(data_cfg.name),
            data_cfg.get("config_name"),
            data_files=_plain(data_files) if data_files is not None else None,
            split=source["split"],
            revision=data_cfg.get("revision"),
        )
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise DataError(
            f"cannot load Hugging Face dataset {data_cfg.name!r}: {str(exc).splitlines()[0]}"
        ) from exc
    image_column = data_cfg.get("image_column")
    if not image_column:
        return _table_dataset(loaded.to_pandas(), data_cfg, source)
    return _hf_images(loaded, data_cfg, str(image_column), source)


def _hf_images(
    loaded: Any, data_cfg: DictConfig, image_column: str, source: dict[str, Any]
) -> Dataset:
    import io

    target = str(data_cfg.target)
    for column in (image_column, target):
        if column not in loaded.column_names:
            raise DataError(
                f"column {column!r} not in the dataset; columns are: {', '.join(loaded.column_names)}"
            )
    height, width = _image_size(data_cfg)
    mode = _mode(data_cfg)
    feature = loaded.features[target]
    names = list(getattr(feature, "names", []) or [])
    images: list[np.ndarray] = []
    raw_target: list[Any] = []
    skipped: list[dict[str, str]] = []
    for row_index, row in track(
        enumerate(loaded), total=len(loaded), description="Decoding images"
    ):
        image = row[image_column]
        try:
            if hasattr(image, "save"):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                blob = buffer.getvalue()
            else:
                blob = image["bytes"] if isinstance(image, dict) else bytes(image)
            images.append(_decode_image(blob, mode, (width, height)))
            raw_target.append(names[row[target]] if names else row[target])
        except (ValueError, TypeError, KeyError) as exc:
            skipped.append({"file": f"row {row_index}", "reason": str(exc)})
    encoded, kind, labels = encode_target(raw_target, target, "classes")
    return Dataset(
        kind=DataKind.IMAGE,
        features=np.stack(images)
        if images
        else np.zeros((0, height, width, 1 if mode == "L" else 3), np.uint8),
        target=encoded,
        target_name=target,
        output_kind=kind,
        labels=labels,
        source=source,
        skipped=skipped,
    )


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


SOURCES: dict[str, Callable[[DictConfig], Dataset]] = {
    "digits": read_digits,
    "wine": read_wine,
    "folder": read_folder,
    "table": read_table,
    "huggingface": read_huggingface,
}
