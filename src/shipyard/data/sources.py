"""Data sources by name (``data.source``): each reads rows into a :class:`Dataset`.

* ``digits`` / ``wine`` — scikit-learn's bundled data, no network (the defaults).
* ``folder`` — an image folder with one sub-folder per class.
* ``table`` — a CSV or Parquet file with a named target column.
* ``huggingface`` — anything ``datasets.load_dataset`` reads (images with
  ``data.image_column``, texts with ``data.text_column``).
* ``aclsum``, ``bbc_news``, ``text_table``, ``text_folder`` — texts (:mod:`shipyard.data.text_sources`).
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
TABLE_FORMATS = ("csv", "parquet")
# Hugging Face column types that can hold images: file paths or encoded bytes.
IMAGE_VALUE_TYPES = ("string", "large_string", "binary", "large_binary")


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
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"image folder {str(root)!r} {what}: pass data.path=FOLDER with one sub-folder per class"
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
        relative = path.relative_to(root)
        # Hidden files and anything under a hidden folder (.ipynb_checkpoints/, .git/).
        if any(part.startswith(".") for part in relative.parts):
            skipped.append({"file": str(relative), "reason": "hidden file"})
            continue
        try:
            images.append(_decode_image(path.read_bytes(), mode, (width, height)))
            target.append(class_index)
        except (ValueError, OSError) as exc:
            skipped.append({"file": str(relative), "reason": _first_line(exc)})
    if not images:
        summary = _skipped_summary(skipped, len(files), "files")
        raise DataError(f"image folder {str(root)!r} has no readable images: {summary}")
    labels = [d.name for d in class_dirs]
    _require_two_classes(target, labels, f"image folder {str(root)!r}")
    if skipped:
        warn_skipped(skipped, len(files), "files that are not readable images")
    return Dataset(
        kind=DataKind.IMAGE,
        features=np.stack(images),
        target=np.asarray(target, dtype=np.int64),
        target_name="class",
        output_kind=OutputKind.CLASSES,
        labels=labels,
        source={"name": "folder", "path": str(root.resolve()), "files": len(files)},
        skipped=skipped,
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _skipped_summary(skipped: list[dict[str, str]], total: int, what: str) -> str:
    if not skipped:
        return f"there are no {what} to read"
    first = skipped[0]
    return f"skipped {len(skipped)} of {total} {what} (first: {first['file']}: {first['reason']})"


def warn_skipped(skipped: list[dict[str, str]], total: int, what: str) -> None:
    """One warning for the items a source skipped (``what``: "texts", "files that are not
    readable images"); the manifest lists every one."""
    warnings.warn(
        f"skipped {len(skipped)} of {total} {what} "
        f"(first: {skipped[0]['file']}: {skipped[0]['reason']}); the manifest lists them",
        stacklevel=3,
    )


def _require_two_classes(target: list[int], labels: list[str], where: str) -> None:
    present = sorted({labels[i] for i in target})
    if len(present) < 2:
        raise DataError(
            f"{where} has readable images of {len(present)} class ({', '.join(present)}): "
            "need at least two classes, one sub-folder each"
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
            decoded: Image.Image = image
            if image.mode.startswith("I;16"):
                # 16-bit greyscale: PIL's convert() would clip everything above 255 to white.
                wide = np.asarray(image).astype(np.uint16)
                decoded = Image.fromarray((wide >> 8).astype(np.uint8))
            converted = decoded.convert(mode).resize(size, Image.Resampling.BILINEAR)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt image ({_first_line(exc)})") from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[..., np.newaxis] if array.ndim == 2 else array


def read_table(data_cfg: DictConfig) -> Dataset:
    """A CSV or Parquet file (local path or fsspec URL) with a named target column."""
    frame, path, fmt = read_table_file(data_cfg, "table file")
    return _table_dataset(frame, data_cfg, {"name": "table", "path": path, "format": fmt})


def read_table_file(data_cfg: DictConfig, what: str) -> tuple[Any, str, str]:
    """``data.path`` read as a DataFrame (CSV or Parquet, by ``data.format`` or the file's
    suffix), with the path and format; one-line errors that call the file ``what``.
    Shared by the table and the text-table sources."""
    import fsspec
    import pandas as pd

    require(data_cfg, "path", "target")
    path = str(data_cfg.path)
    fmt = data_cfg.get("format") or ("parquet" if path.endswith((".parquet", ".pq")) else "csv")
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(TABLE_FORMATS)}, not {fmt!r}")
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        raise DataError(f"{what} {path!r} does not exist: pass data.path=FILE")
    try:
        with fs.open(fs_path, "rb") as handle:
            frame = pd.read_parquet(handle) if fmt == "parquet" else pd.read_csv(handle)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{what} {path!r} is empty: expected a header row of column names and data rows"
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path!r} as {fmt}: {_first_line(exc)}") from exc
    return frame, path, fmt


def _table_dataset(frame: Any, data_cfg: DictConfig, source: dict[str, Any]) -> Dataset:
    import pandas as pd

    target = str(data_cfg.target)
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} not found; columns are: {', '.join(map(str, frame.columns))} "
            "(set data.target=COLUMN)"
        )
    if len(frame) == 0:
        raise DataError(
            f"the table has no rows, only the columns {', '.join(map(str, frame.columns))}: "
            "expected one row per example"
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

    require(data_cfg, "name", "target")
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
    except (
        FileNotFoundError,
        ValueError,
        ConnectionError,
        datasets.exceptions.DatasetsError,
    ) as exc:
        raise DataError(
            f"cannot load Hugging Face dataset {data_cfg.name!r}: {_hf_error(exc)}"
        ) from exc
    target = str(data_cfg.target)
    if target not in loaded.column_names:
        raise DataError(
            f"target column {target!r} not in the dataset; columns are: "
            f"{', '.join(loaded.column_names)} (set data.target=COLUMN)"
        )
    image_column = data_cfg.get("image_column")
    if image_column:
        return _hf_images(loaded, data_cfg, str(image_column), source)
    if data_cfg.get("text_column"):
        from shipyard.data.text_sources import frame_dataset

        frame = loaded.to_pandas()
        names = _class_names(loaded, target)
        if names:
            frame[target] = [_label_name(names, v) for v in frame[target]]
            frame = frame[frame[target].notna()]
        return frame_dataset(frame, data_cfg, source)
    wanted = data_cfg.get("features")
    for column, feature in loaded.features.items():
        if isinstance(feature, datasets.Image) and (not wanted or column in wanted):
            raise DataError(
                f"column {column!r} holds images: set data.image_column={column} for an image "
                "dataset, or leave it out with data.features=[...]"
            )
    frame = loaded.to_pandas()
    names = _class_names(loaded, target)
    if names:  # a ClassLabel target: its names, not its integer codes, are the labels
        frame[target] = [_label_name(names, v) for v in frame[target]]
    return _table_dataset(frame, data_cfg, source)


def _hf_error(exc: BaseException) -> str:
    """The first line of a ``datasets`` error, with its cause when the error itself is vague."""
    detail = _first_line(exc)
    cause = exc.__cause__
    if cause is not None:
        detail = f"{detail} ({type(cause).__name__}: {_first_line(cause)})"
    return detail


def _class_names(loaded: Any, column: str) -> list[str]:
    return [str(n) for n in (getattr(loaded.features[column], "names", None) or [])]


def _label_name(names: list[str], code: Any) -> str | None:
    """A ClassLabel code as its name; -1 or a missing value means the row has no label."""
    if code is None or code != code or int(code) < 0:  # code != code: NaN
        return None
    return names[int(code)]


def _hf_images(
    loaded: Any, data_cfg: DictConfig, image_column: str, source: dict[str, Any]
) -> Dataset:
    """Decode the image column ourselves (not through ``datasets``) so that a corrupt or
    missing file is skipped and reported like in an image folder instead of failing."""
    import datasets

    target = str(data_cfg.target)
    if image_column not in loaded.column_names:
        raise DataError(
            f"image column {image_column!r} not in the dataset; columns are: "
            f"{', '.join(loaded.column_names)} (set data.image_column=COLUMN)"
        )
    height, width = _image_size(data_cfg)
    mode = _mode(data_cfg)
    names = _class_names(loaded, target)
    feature = loaded.features[image_column]
    holds_images = isinstance(feature, datasets.Image) or (
        isinstance(feature, datasets.Value) and feature.dtype in IMAGE_VALUE_TYPES
    )
    if not holds_images:
        raise DataError(
            f"column {image_column!r} does not hold images or image file paths "
            f"(it holds {feature}): set data.image_column=COLUMN"
        )
    # Undecoded: {"bytes": ..., "path": ...} per row (file paths become the same).
    raw = loaded.cast_column(image_column, datasets.Image(decode=False))
    images: list[np.ndarray] = []
    raw_target: list[Any] = []
    skipped: list[dict[str, str]] = []
    for row_index, row in track(enumerate(raw), total=len(raw), description="Decoding images"):
        value, label = row[image_column], row[target]
        try:
            images.append(_decode_image(_hf_image_bytes(value), mode, (width, height)))
        except (ValueError, OSError) as exc:
            where = value.get("path") if isinstance(value, dict) else None
            skipped.append({"file": where or f"row {row_index}", "reason": _first_line(exc)})
            continue
        raw_target.append(_label_name(names, label) if names else label)
    if not images:
        summary = _skipped_summary(skipped, len(raw), "rows")
        raise DataError(
            f"Hugging Face dataset {data_cfg.name!r} has no readable images in column "
            f"{image_column!r}: {summary}"
        )
    encoded, kind, labels = encode_target(raw_target, target, "classes")
    if skipped:
        warn_skipped(skipped, len(raw), "rows that are not readable images")
    return Dataset(
        kind=DataKind.IMAGE,
        features=np.stack(images),
        target=encoded,
        target_name=target,
        output_kind=kind,
        labels=labels,
        source=source,
        skipped=skipped,
    )


def _hf_image_bytes(value: Any) -> bytes:
    """The encoded bytes of one undecoded ``datasets.Image`` value (embedded or a file)."""
    import fsspec

    if value is None:
        raise ValueError("no image in this row")
    if value.get("bytes") is not None:
        return bytes(value["bytes"])
    if not value.get("path"):
        raise ValueError("no image bytes and no file path in this row")
    with fsspec.open(value["path"], "rb") as handle:
        blob: bytes = handle.read()
    return blob


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _text_sources() -> dict[str, Callable[[DictConfig], Dataset]]:
    from shipyard.data import text_sources

    return {
        "aclsum": text_sources.read_aclsum,
        "bbc_news": text_sources.read_bbc_news,
        "text_table": text_sources.read_text_table,
        "text_folder": text_sources.read_text_folder,
    }


SOURCES: dict[str, Callable[[DictConfig], Dataset]] = {
    "digits": read_digits,
    "wine": read_wine,
    "folder": read_folder,
    "table": read_table,
    "huggingface": read_huggingface,
    **_text_sources(),
}
