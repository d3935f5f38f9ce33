"""The model package: ONNX graph(s) + ``manifest.json``, the contract between training and serving.

A package is a folder. ``manifest.json`` says what the graphs compute (task, labels,
input and output spec), how good they are (test metrics per graph, parity with PyTorch,
latency per batch size) and where they came from (run, snapshot, commit, resolved
config). Every other file is listed with its SHA-256, and :func:`load_package` verifies
them, so the model that is served is byte for byte the model that was tested.

This module is torch-free (pydantic and hashlib only): the serving side imports it.
Nothing in a package is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.errors import UserError

MANIFEST = "manifest.json"
#: a text package's tokenizer, beside its graphs (the same name as tasks.text.tokenizer's)
TOKENIZER_FILE = "tokenizer.json"
FORMAT = 1
#: the graph that ``Manifest.graph`` means without a role: a single-graph package's model, a
#: seq2seq package's encoder (the decoding loop's first graph, beside its generation.json)
ENTRY_ROLES = ("model", "encoder")
REEXPORT_HINT = "re-create it with `shipyard export run=RUN_ID`"


class PackageError(UserError):
    """A package is missing, incomplete, altered after export, or not a Shipyard package."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output of the graphs. ``None`` in ``shape`` is a dynamic axis (the batch)."""

    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "str"
    shape: list[int | None]
    description: str = ""
    #: tables: the feature columns, in the order the graph expects them
    columns: list[str] | None = None


class Latency(_Strict):
    """Wall time of one ONNX Runtime call on a batch, on the exporting machine."""

    p50_ms: float
    p95_ms: float
    rows_per_s: float


class GraphSpec(_Strict):
    """One ONNX file of the package."""

    #: "model" for single-graph tasks. A seq2seq package has "encoder", "decoder" and
    #: "decoder_with_past"; its encoder is the entry (the one ``Manifest.graph`` returns),
    #: and its metrics and latency are those of whole summaries (encoder + decoding loop)
    role: str = "model"
    precision: Literal["fp32", "int8"] = "fp32"
    file: str
    sha256: str
    bytes: int
    #: test-split metrics of this graph under ONNX Runtime (int8 differs from fp32)
    metrics: dict[str, float] = Field(default_factory=dict)
    #: batch size -> latency
    latency: dict[int, Latency] = Field(default_factory=dict)
    #: ONNX Runtime threads the latency was measured with
    threads: int = 1


class ParityReport(_Strict):
    """PyTorch vs ONNX Runtime over the whole test split (the fp32 graph)."""

    rows: int
    max_abs_diff: float
    labels_equal: bool
    tolerance: float
    passed: bool
    #: generated text: the share of test documents whose ONNX greedy summary is the same
    #: token for token as PyTorch's ``generate`` (``labels_equal``: at least the minimum)
    sequences_equal: float | None = None


class Lineage(_Strict):
    """The chain a package came from: snapshot -> run -> package."""

    run_id: str
    snapshot_id: str
    snapshot_store: str
    experiment_id: str | None = None
    tracking_uri: str | None = None
    git_commit: str | None = None
    config_fingerprint: str | None = None


class TokenizerSpec(_Strict):
    """Text packages: the tokenizer file that turns a text into the graph's token ids. The
    file itself (Hugging Face's ``tokenizer.json``) carries these settings too; they are
    repeated here so that a reader of the manifest sees the input's limits."""

    file: str = "tokenizer.json"
    #: tokens per text at most, special tokens included; longer texts are truncated
    max_length: int
    #: the id that pads a batch to its longest text (the graph masks it)
    pad_id: int
    #: the library that reads ``file`` at serve time
    library: str = "tokenizers"


class Manifest(_Strict):
    format: int = FORMAT
    task: str
    output_kind: str  # shipyard.tasks.base.OutputKind value
    labels: list[str] | None = None
    input: TensorSpec
    outputs: list[TensorSpec]
    #: text packages: how texts become ``input``; its file is listed in ``files``
    tokenizer: TokenizerSpec | None = None
    graphs: list[GraphSpec]
    #: test metrics of the trained PyTorch model (``test_accuracy``, ...)
    metrics: dict[str, float]
    parity: ParityReport
    lineage: Lineage
    #: the run's resolved config
    config: dict[str, Any]
    #: every other file of the package (report, plots) -> SHA-256
    files: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    shipyard_version: str = ""

    def graph(self, precision: str = "fp32", role: str | None = None) -> GraphSpec:
        """The graph of ``role`` in ``precision``; no role: the entry graph (``model``, or a
        seq2seq package's ``encoder``)."""
        roles = (role,) if role else ENTRY_ROLES
        for wanted in roles:
            for spec in self.graphs:
                if spec.precision == precision and spec.role == wanted:
                    return spec
        have = ", ".join(f"{g.role}/{g.precision}" for g in self.graphs)
        raise PackageError(
            f"the package has no {role or 'model'} graph in {precision} (it has {have}); "
            "export with quantize=int8 to add the int8 graph"
        )


class ModelPackage:
    """A verified package on local disk."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    def graph_path(self, precision: str = "fp32", role: str | None = None) -> Path:
        return self.path / self.manifest.graph(precision, role).file

    def __repr__(self) -> str:
        return f"ModelPackage({str(self.path)!r}, task={self.manifest.task!r})"


def input_schema(folder: Path, schema: dict[str, Any]) -> dict[str, Any]:
    """The snapshot ``schema`` completed with what the package in ``folder`` carries for
    building its input: ``tokenizer`` (the path of its ``tokenizer.json``) when it has one.
    ``Task.model_input`` of a text task needs it; other tasks ignore it."""
    tokenizer = Path(folder) / TOKENIZER_FILE
    return schema | {"tokenizer": str(tokenizer)} if tokenizer.is_file() else schema


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_graph(path: Path, **fields: Any) -> GraphSpec:
    """A :class:`GraphSpec` for an ONNX file in the package folder, with its checksum and size
    (the external weights it reads included)."""
    from shipyard.export.shared_weights import graph_bytes

    return GraphSpec(file=path.name, sha256=sha256_file(path), bytes=graph_bytes(path), **fields)


def checksums(folder: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of extra package files (report, plots), for ``Manifest.files``."""
    return {name: sha256_file(folder / name) for name in names}


def save_package(staging: Path, manifest: Manifest, destination: Path) -> ModelPackage:
    """Write ``manifest.json`` into a fully assembled ``staging`` folder, verify it, and
    move it to ``destination`` (replacing a package already there) by rename."""
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    load_package(staging)  # a package that would not load is never moved into place
    destination.parent.mkdir(parents=True, exist_ok=True)
    old = destination.with_name(f".{destination.name}.old")
    if destination.exists():
        shutil.rmtree(old, ignore_errors=True)
        destination.replace(old)
    staging.replace(destination)
    shutil.rmtree(old, ignore_errors=True)
    return ModelPackage(destination, manifest)


def load_package(path: Path | str, *, verify: bool = True) -> ModelPackage:
    """Read a package folder; with ``verify``, check every file against its checksum.

    Raises :class:`PackageError` with one line naming the file and what is wrong.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        what = "no such folder" if not folder.exists() else f"no {MANIFEST} in it"
        raise PackageError(f"{folder} is not a model package ({what}): {REEXPORT_HINT}")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{manifest_path} is not valid JSON ({exc}): {REEXPORT_HINT}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise PackageError(
            f"{manifest_path} has package format {found!r}; this Shipyard reads format {FORMAT}"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PackageError(
            f"{manifest_path} is not a valid manifest ({where}: {first['msg']}): {REEXPORT_HINT}"
        ) from None
    if verify:
        expected = {g.file: g.sha256 for g in manifest.graphs} | manifest.files
        for name, digest in expected.items():
            _verify_file(folder, name, digest)
    return ModelPackage(folder, manifest)


def _verify_file(folder: Path, name: str, digest: str) -> None:
    file = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise PackageError(f"{folder / MANIFEST} names a file outside the package: {name!r}")
    if not file.is_file():
        raise PackageError(f"package {folder} is missing {name}: {REEXPORT_HINT}")
    actual = sha256_file(file)
    if actual != digest:
        raise PackageError(
            f"package {folder}: {name} does not match its checksum (expected {digest[:12]}…, "
            f"found {actual[:12]}…): the file changed after export; {REEXPORT_HINT}"
        )
