"""Content-addressed, immutable data snapshots on any fsspec filesystem.

A snapshot is a folder named by the hash of its content::

    <root>/<id>/manifest.json          source, counts, class balance, schema, hash, time
    <root>/<id>/{train,val,test}/      features.npy (images) or features.parquet (tables, text), target.npy
    <root>/<id>/reference/             the drift reference: monitor features of the training split

The id hashes the split data (and what the target means), not paths or times, so the
same source prepared twice, anywhere, gives the same id. A snapshot is written under
``<root>/.tmp/`` and renamed into place only when complete: a failed prepare leaves no
snapshot behind, and ``manifest.json`` is the last file written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard import __version__
from shipyard.errors import ConfigError, NotFoundError
from shipyard.tasks.base import DataKind, Split

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
TMP = ".tmp"
ID_LENGTH = 16
# A shorter id prefix is never looked up: too likely to match by chance.
MIN_PREFIX = 4


@dataclass(frozen=True)
class Snapshot:
    """A snapshot in a store: its manifest and a way to read its splits."""

    store: SnapshotStore
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def kind(self) -> DataKind:
        return DataKind(self.manifest["kind"])

    @property
    def labels(self) -> list[str] | None:
        labels = self.manifest["schema"]["target"].get("labels")
        return list(labels) if labels is not None else None

    def load(self, split: str) -> Split:
        """One split in memory (arrays load without pickle)."""
        if split not in SPLITS:
            raise NotFoundError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        folder = f"{self.store.path(self.id)}/{split}"
        target = self.store.read_array(f"{folder}/target.npy")
        if self.kind is DataKind.IMAGE:
            features: Any = self.store.read_array(f"{folder}/features.npy")
        else:
            features = self.store.read_table(f"{folder}/features.parquet")
        return Split(features=features, target=target)

    def reference(self) -> Any:
        """The drift reference: monitor features of (a sample of) the training split."""
        return self.store.read_table(f"{self.store.path(self.id)}/reference/features.parquet")


class SnapshotStore:
    """Snapshots under a root folder or URL (``/data/snapshots``, ``gs://b/snapshots``)."""

    def __init__(self, root: str) -> None:
        import fsspec

        self.url = root
        try:
            self.fs, self.root = fsspec.core.url_to_fs(root)
        except ImportError as exc:  # fsspec knows the scheme; its library is not installed
            raise ConfigError(_missing_filesystem(root, exc)) from None
        except ValueError as exc:  # "Protocol not known: ..."
            raise ConfigError(f"cannot open the snapshot store {root}: {exc}") from None

    def path(self, snapshot_id: str) -> str:
        return f"{self.root.rstrip('/')}/{snapshot_id}"

    def exists(self, snapshot_id: str) -> bool:
        return bool(self.fs.exists(f"{self.path(snapshot_id)}/{MANIFEST}"))

    def list(self) -> list[dict[str, Any]]:
        """Manifests of complete snapshots, newest first."""
        if not self.fs.exists(self.root):
            return []
        manifests = []
        for entry in self.fs.ls(self.root, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") or not self.exists(name):
                continue
            manifests.append(self._read_manifest(name))
        return sorted(manifests, key=lambda m: m["created_at"], reverse=True)

    def get(self, ref: str) -> Snapshot:
        """A snapshot by id or unique id prefix."""
        ref = ref.strip()
        # A plain name only: "../x" or ".tmp/..." must not reach outside the store.
        plain = bool(ref) and not ref.startswith(".") and "/" not in ref and "\\" not in ref
        if plain and self.exists(ref):
            return Snapshot(self, self._read_manifest(ref))
        matches = [m["id"] for m in self.list()] if plain and len(ref) >= MIN_PREFIX else []
        matches = [m for m in matches if m.startswith(ref)]
        if len(matches) == 1:
            return Snapshot(self, self._read_manifest(matches[0]))
        if len(matches) > 1:
            raise NotFoundError(
                f"snapshot prefix {ref!r} is ambiguous ({', '.join(matches)}): give more characters"
            )
        hint = (
            f" (a prefix needs at least {MIN_PREFIX} characters)" if len(ref) < MIN_PREFIX else ""
        )
        raise NotFoundError(
            f"no snapshot {ref!r} in {self.url}{hint}: `shipyard data list` shows the ones there are"
        )

    def write(
        self, splits: dict[str, Split], manifest: dict[str, Any], reference: Any
    ) -> tuple[Snapshot, bool]:
        """Store a snapshot unless one with this id exists; returns it and whether it was reused."""
        snapshot_id = str(manifest["id"])
        if self.exists(snapshot_id):
            return Snapshot(self, self._read_manifest(snapshot_id)), True
        staging = f"{self.root.rstrip('/')}/{TMP}/{snapshot_id}-{uuid.uuid4().hex[:8]}"
        try:
            written: list[str] = []
            for name, split in splits.items():
                written.extend(self._write_split(f"{staging}/{name}", split))
            written.append(self._write_table(f"{staging}/reference/features.parquet", reference))
            self._write_bytes(f"{staging}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
            if self.exists(snapshot_id) or not self._publish(
                staging, snapshot_id, [w[len(staging) + 1 :] for w in written]
            ):  # a concurrent prepare of the same data won
                return Snapshot(self, self._read_manifest(snapshot_id)), True
        finally:
            self._remove(staging)
        return Snapshot(self, manifest), False

    def _publish(self, staging: str, snapshot_id: str, files: Sequence[str]) -> bool:
        """Move a complete staging folder into place; False if another writer got there first.

        On a local disk this is one atomic rename. Object stores have no rename, so each
        file is copied with ``manifest.json`` last: until it lands there is no snapshot,
        and a failure removes what was copied.
        """
        from fsspec.implementations.local import LocalFileSystem

        final = self.path(snapshot_id)
        if isinstance(self.fs, LocalFileSystem):
            from pathlib import Path

            # os.rename: atomic, and it refuses to replace a folder that has files in it.
            try:
                Path(staging).rename(final)
            except OSError:
                if self.exists(snapshot_id):
                    return False
                if not Path(final).is_dir():
                    raise
                # Remains of an interrupted copy (no manifest): replace them.
                self.fs.rm(final, recursive=True)
                Path(staging).rename(final)
            return True
        copied: list[str] = []
        try:
            for relative in [*files, MANIFEST]:
                self.fs.cp_file(f"{staging}/{relative}", f"{final}/{relative}")
                copied.append(f"{final}/{relative}")
        except BaseException:
            if not self.exists(snapshot_id):  # only our own files: another writer may be copying
                for path in copied:
                    self._remove(path)
            raise
        return True

    def _remove(self, path: str) -> None:
        """Best-effort removal of a file or folder: cleanup must not hide the real error."""
        with contextlib.suppress(OSError):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    # -- file helpers: every write and read goes through fsspec -------------------------

    def _write_split(self, folder: str, split: Split) -> tuple[str, str]:
        if isinstance(split.features, np.ndarray):
            features = self._write_array(f"{folder}/features.npy", split.features)
        else:
            features = self._write_table(f"{folder}/features.parquet", split.features)
        return features, self._write_array(f"{folder}/target.npy", split.target)

    def _write_bytes(self, path: str, blob: bytes) -> str:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(blob)
        return path

    def _write_array(self, path: str, array: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        return self._write_bytes(path, buffer.getvalue())

    def _write_table(self, path: str, frame: Any) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self._write_bytes(path, buffer.getvalue())

    def read_array(self, path: str) -> np.ndarray:
        with self.fs.open(path, "rb") as handle:
            array: np.ndarray = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        return array

    def read_table(self, path: str) -> Any:
        import pandas as pd

        with self.fs.open(path, "rb") as handle:
            return pd.read_parquet(io.BytesIO(handle.read()))

    def _read_manifest(self, snapshot_id: str) -> dict[str, Any]:
        with self.fs.open(f"{self.path(snapshot_id)}/{MANIFEST}", "rb") as handle:
            manifest: dict[str, Any] = json.loads(handle.read())
        return manifest


def _missing_filesystem(root: str, exc: ImportError) -> str:
    """One line naming the package to install for a bucket URL (gcsfs for ``gs://``, s3fs
    for ``s3://``, adlfs for ``az://``): the library that fsspec's registry names for it."""
    from fsspec.core import split_protocol
    from fsspec.registry import known_implementations

    protocol = split_protocol(root)[0] or "file"
    implementation = str(known_implementations.get(protocol, {}).get("class", ""))
    package = implementation.split(".", 1)[0]
    if not package:
        return f"cannot open the snapshot store {root}: {exc}"
    return (
        f"the snapshot store {root} needs the {package} package, which is not installed: "
        f"pip install {package}"
    )


def content_hash(splits: dict[str, Split], meaning: dict[str, Any]) -> str:
    """SHA-256 over the split data and what the target means, in a canonical form.

    Tables hash column names and float64 values (not Parquet bytes, whose metadata
    varies between library versions), text columns their UTF-8 bytes with each text's
    length; arrays hash dtype, shape and bytes.
    """
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode())
    for name in sorted(splits):
        split = splits[name]
        digest.update(f"split:{name}".encode())
        for key, array in _canonical_arrays(split):
            digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _canonical_arrays(split: Split) -> list[tuple[str, np.ndarray]]:
    arrays: list[tuple[str, np.ndarray]] = []
    if isinstance(split.features, np.ndarray):
        arrays.append(("features", split.features))
    else:
        for column in split.features.columns:
            values = split.features[column]
            if values.dtype == object or str(values.dtype).startswith("string"):
                arrays.extend(_text_arrays(str(column), values.astype(str).tolist()))
            else:
                arrays.append((f"column:{column}", values.to_numpy(dtype=np.float64)))
    arrays.append(("target", split.target))
    return arrays


def _text_arrays(column: str, texts: list[str]) -> list[tuple[str, np.ndarray]]:
    """A text column in canonical form: every text's UTF-8 length, then all the bytes (the
    lengths make ["ab", "c"] and ["a", "bc"] differ)."""
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.array([len(b) for b in encoded], dtype=np.int64)
    return [
        (f"text:{column}:lengths", lengths),
        (f"text:{column}:bytes", np.frombuffer(b"".join(encoded), dtype=np.uint8)),
    ]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def creator() -> dict[str, str]:
    return {"shipyard": __version__}
