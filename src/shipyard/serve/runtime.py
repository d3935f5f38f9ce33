"""A model package as a ready ONNX Runtime session: built, checked against its manifest,
smoke-tested, and only then served.

:meth:`ServedModel.load` is the one gate between "a package on disk" and "a model the
batcher may call". It refuses, with a one-line :class:`ModelLoadError`, a graph that
ONNX Runtime cannot open, whose input or outputs disagree with the manifest (names,
dtype, shapes), or whose answers on a few synthetic rows are not finite, have the wrong
shape, or (for classes) are not probabilities. Hot reload calls it for a candidate
version and keeps the old model when it raises, so a broken package never reaches a
request.

Torch-free on purpose (NumPy, ONNX Runtime and the package contract only): the serve
install has no torch, and a test imports this module in a fresh interpreter to prove it.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import UserError
from shipyard.export.package import Manifest, ModelPackage, TensorSpec
from shipyard.export.scoring import is_generator
from shipyard.tasks.base import OutputKind
from shipyard.tasks.text.tokenizer import TextTokenizer

PRECISIONS = ("fp32", "int8")
#: ONNX Runtime's element type names for the numpy dtype names a manifest uses
ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)"}
#: what a graph's input may be: float32 features (pixels, columns) or int64 token ids (text)
INPUT_DTYPES = ("float32", "int64")
#: texts that a text model's smoke prediction tokenises: empty, short, and over any limit
SMOKE_TEXTS = ("", "A short text to smoke-test the model.", "Shipyard " * 600)
#: probabilities must sum to 1 within this (int8 graphs compute softmax in float, too)
PROBABILITY_TOLERANCE = 1e-3
#: the fix that fits almost every load failure: the package itself is wrong
FIX = "re-export the run (`shipyard export run=RUN_ID`) and register the new package"


class ModelLoadError(UserError):
    """A package that cannot be served: the graph does not open, does not match its
    manifest, or fails the smoke prediction. The message is one line: what failed and
    how to fix it."""


@dataclass(frozen=True)
class ServedModel:
    """One registered version, loaded: the package, the precision served and its session.

    Frozen, so hot reload swaps the whole object (one reference assignment) and a batch
    that read it keeps a consistent model until it finishes.
    """

    name: str
    version: str
    package: ModelPackage
    precision: str  # "fp32" | "int8"
    session: Any = field(repr=False)  # onnxruntime.InferenceSession
    input_name: str
    output_names: list[str]
    #: whether a row's outputs depend on that row alone. False for graphs that quantise
    #: activations dynamically (ORT's dynamic int8: the scale comes from the whole
    #: batch's range, so one request with extreme values would change its neighbours'
    #: answers); the batcher then makes one ORT call per request.
    rows_independent: bool = True
    #: text models: the package's tokenizer (texts -> token ids), loaded with the graph so
    #: that a reload swaps both at once; None for other models
    tokenizer: TextTokenizer | None = field(default=None, repr=False)
    input_dtype: str = "float32"

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def pad_id(self) -> int | None:
        """The token id that pads a batch of texts to its longest (None: not token ids)."""
        return self.tokenizer.pad_id if self.tokenizer is not None else None

    def run(self, features: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """One ONNX Runtime call on a batch of rows (the input's dtype, batch axis first);
        the outputs ``names`` (every output of the manifest by default), by name. Asking a
        text generator for its ``embedding`` alone runs only its encoder. Thread-safe: ORT
        sessions allow concurrent ``run`` calls, and the batcher makes one at a time anyway."""
        wanted = names or self.output_names
        feed = {self.input_name: np.ascontiguousarray(features, dtype=self.input_dtype)}
        values = self.session.run(wanted, feed)
        return dict(zip(wanted, values, strict=True))

    def decode_text(self, sequences: np.ndarray) -> list[str]:
        """Generated token ids (the ``sequences`` output of a model whose output kind is
        ``text``) as texts, one per row, by the package's own decoder (special tokens and
        padding dropped)."""
        decode = getattr(self.session, "decode", None)
        if decode is None:
            raise TypeError(f"{self.name} v{self.version} does not generate text")
        return [str(text) for text in decode(sequences)]

    @classmethod
    def load(
        cls,
        package: ModelPackage,
        *,
        name: str,
        version: str,
        precision: str = "fp32",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> ServedModel:
        """Open the package's graph in ``precision``, check it against the manifest and
        smoke-test it; :class:`ModelLoadError` (one line) if any of that fails.

        ``intra_op_threads=1`` is the default because the batcher already turns a busy
        server into large batches on one worker thread and the event loop needs a core of
        its own; more threads only pay for large batches of a heavy graph on a box with
        cores to spare (``benchmarks/bench_batcher.py`` measures it).
        """
        where = f"{name} v{version} ({precision}, {package.path})"
        if precision not in PRECISIONS:
            raise ModelLoadError(
                f"cannot serve {where}: unknown precision {precision!r}; "
                f"choose one of {', '.join(PRECISIONS)}"
            )
        if intra_op_threads < 1 or inter_op_threads < 1:
            raise ModelLoadError(
                f"cannot serve {where}: ONNX Runtime threads must be at least 1, got "
                f"intra_op_threads={intra_op_threads}, inter_op_threads={inter_op_threads}"
            )
        manifest = package.manifest
        try:
            path = package.graph_path(precision)
        except UserError as exc:  # PackageError: no graph in this precision
            raise ModelLoadError(f"cannot serve {where}: {exc}") from None
        if not path.is_file():
            raise ModelLoadError(f"cannot serve {where}: {path.name} is missing; {FIX}")
        session = _session(path, where, intra_op_threads, inter_op_threads)
        _check_signature(session, manifest, where)
        tokenizer = _tokenizer(package, where)
        model = cls(
            name=name,
            version=version,
            package=package,
            precision=precision,
            session=session,
            input_name=manifest.input.name,
            output_names=[spec.name for spec in manifest.outputs],
            rows_independent=not quantises_per_batch(path),
            tokenizer=tokenizer,
            input_dtype=manifest.input.dtype,
        )
        _smoke(model, where)
        return model


# -- the session --------------------------------------------------------------------------

#: a graph slower than this for one row (p50 at batch 1, measured at export) is heavy
HEAVY_GRAPH_MS = 5.0


def auto_threads(package: ModelPackage, precision: str, workers: int = 1) -> int:
    """ONNX Runtime intra-op threads for ``serve.intra_op_threads: 0`` (auto).

    One for a light graph: the batcher turns a busy server into large batches on one
    thread, and HTTP and parsing need the other cores (the image models: under 1 ms a
    row). Every usable core, shared among the workers, for a heavy one (a transformer: 20 ms
    to seconds a request), whose cost is the model, not HTTP: MiniLM on 128-token texts
    served 49 requests/s with one thread and 87 with two on two cores
    (docs/benchmarks.md, text serving). The export's own latency says which it is.
    """
    import os

    try:
        latency = package.manifest.graph(precision).latency.get(1)
    except UserError:
        latency = None
    if latency is None or latency.p50_ms < HEAVY_GRAPH_MS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(workers, 1))


def _session(path: Path, where: str, intra_op_threads: int, inter_op_threads: int) -> Any:
    """A CPU session with every graph optimisation.

    No ``session.intra_op.allow_spinning`` entry: with one intra-op thread (the default)
    ORT has no pool to spin; with two, ``bench_batcher.py --tune`` found spinning on, off
    and ORT's default within run-to-run noise under the batcher, so ORT's default stays.
    """
    if is_generator(path):
        return _generation_session(path, where, intra_op_threads, inter_op_threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        raise ModelLoadError(
            f"cannot serve {where}: ONNX Runtime cannot open {path.name} "
            f"({type(exc).__name__}: {_first_line(exc)}); {FIX}"
        ) from None


def _generation_session(
    path: Path, where: str, intra_op_threads: int, inter_op_threads: int
) -> Any:
    """A seq2seq package's decoding loop, which answers like one session (token ids in,
    generated ids and the embedding out)."""
    from shipyard.tasks.summarize.session import GenerationSession

    try:
        return GenerationSession(
            path.parent, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
        )
    except Exception as exc:  # ORT's pybind errors, a broken generation.json
        raise ModelLoadError(
            f"cannot serve {where}: its decoding graphs do not open "
            f"({type(exc).__name__}: {_first_line(exc)}); {FIX}"
        ) from None


def _check_signature(session: Any, manifest: Manifest, where: str) -> None:
    """The graph's one input and its outputs are the manifest's: names, dtype, shapes
    (a fixed dimension equal, a dynamic one dynamic in both, the batch axis dynamic)."""
    inputs = session.get_inputs()
    spec = manifest.input
    if len(inputs) != 1:
        found = ", ".join(i.name for i in inputs)
        raise ModelLoadError(
            f"cannot serve {where}: the graph has {len(inputs)} inputs ({found}), "
            f"the manifest one ({spec.name}); {FIX}"
        )
    graph_input = inputs[0]
    if graph_input.name != spec.name:
        raise ModelLoadError(
            f"cannot serve {where}: the graph's input is {graph_input.name!r}, the manifest "
            f"says {spec.name!r}; {FIX}"
        )
    if spec.dtype not in INPUT_DTYPES or graph_input.type != ORT_TYPES[spec.dtype]:
        raise ModelLoadError(
            f"cannot serve {where}: input {spec.name!r} must be float32 (or int64 token ids) "
            f"and the same in the graph and the manifest (graph {graph_input.type}, manifest "
            f"{spec.dtype}); {FIX}"
        )
    if (spec.dtype == "int64") != (manifest.tokenizer is not None):
        raise ModelLoadError(
            f"cannot serve {where}: an int64 input (token ids) needs a tokenizer in the "
            f"manifest, and a tokenizer an int64 input; {FIX}"
        )
    _check_shape(graph_input.shape, spec, where, "input")

    graph_outputs = {o.name: o for o in session.get_outputs()}
    wanted = [o.name for o in manifest.outputs]
    if set(graph_outputs) != set(wanted):
        raise ModelLoadError(
            f"cannot serve {where}: the graph's outputs are {sorted(graph_outputs)}, the "
            f"manifest's {sorted(wanted)}; {FIX}"
        )
    for out in manifest.outputs:
        graph_output = graph_outputs[out.name]
        expected = ORT_TYPES.get(out.dtype)
        if expected is None or graph_output.type != expected:
            raise ModelLoadError(
                f"cannot serve {where}: output {out.name!r} is {graph_output.type} in the "
                f"graph, {out.dtype} in the manifest; {FIX}"
            )
        _check_shape(graph_output.shape, out, where, "output")


def _check_shape(graph_shape: list[Any], spec: TensorSpec, where: str, role: str) -> None:
    """ORT reports a dynamic axis as a name (``"batch"``) or ``None``, a fixed one as an
    int; the manifest as ``None`` or an int. The batch axis must be dynamic."""
    shown = [d if isinstance(d, int) else None for d in graph_shape]
    agree = len(shown) == len(spec.shape) and all(
        g == m for g, m in zip(shown, spec.shape, strict=True)
    )
    if not agree or not spec.shape or spec.shape[0] is not None:
        raise ModelLoadError(
            f"cannot serve {where}: {role} {spec.name!r} has shape {shown} in the graph, "
            f"{spec.shape} in the manifest (None: a dynamic axis, the batch first); {FIX}"
        )


def quantises_per_batch(path: Path) -> bool:
    """Whether the graph holds a ``DynamicQuantizeLinear`` node (ORT's dynamic int8).

    Read from the file's bytes (an op type is stored as plain text in the protobuf)
    because the serve install has no ``onnx`` package to parse it with. A false positive
    (the word in a node's name) only costs batching, never correctness.
    """
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(b"DynamicQuantizeLinear") >= 0


def _tokenizer(package: ModelPackage, where: str) -> TextTokenizer | None:
    """The package's tokenizer (text models), with its limits checked against the manifest."""
    spec = package.manifest.tokenizer
    if spec is None:
        return None
    try:
        tokenizer = TextTokenizer.from_file(package.path / spec.file)
    except Exception as exc:  # tokenizers raises its own Exception subclass on a bad file
        raise ModelLoadError(
            f"cannot serve {where}: the tokenizer {spec.file} does not load "
            f"({type(exc).__name__}: {_first_line(exc)}); {FIX}"
        ) from None
    if (tokenizer.max_length, tokenizer.pad_id) != (spec.max_length, spec.pad_id):
        raise ModelLoadError(
            f"cannot serve {where}: {spec.file} truncates at {tokenizer.max_length} and pads "
            f"with {tokenizer.pad_id}, the manifest says {spec.max_length} and {spec.pad_id}; {FIX}"
        )
    return tokenizer


# -- the smoke prediction -----------------------------------------------------------------


def smoke_rows(spec: TensorSpec) -> np.ndarray:
    """Three rows that fit the input spec: zeros, a mid-range constant and seeded noise.

    Image inputs (rank 3 per row) are pixels 0..255; tables take any real number, so
    their rows stay in 0..1. The point is not accuracy but "the graph answers sensibly
    for inputs of the right shape", which catches a graph exported for other data.
    """
    per_row = [int(d) if d is not None else 1 for d in spec.shape[1:]]
    high = 255.0 if len(per_row) >= 3 else 1.0
    noise = np.random.default_rng(0).uniform(0.0, high, size=per_row)
    rows = [np.zeros(per_row), np.full(per_row, high / 2), noise]
    return np.stack(rows).astype(np.float32)


def _smoke(model: ServedModel, where: str) -> None:
    manifest = model.manifest
    rows = (
        model.tokenizer.encode(SMOKE_TEXTS).ids
        if model.tokenizer is not None
        else smoke_rows(manifest.input)
    )
    try:
        outputs = model.run(rows)
    except Exception as exc:  # any ORT failure on rows of the declared shape
        raise ModelLoadError(
            f"cannot serve {where}: the smoke prediction on {len(rows)} rows of shape "
            f"{list(rows.shape[1:])} failed ({type(exc).__name__}: {_first_line(exc)}); {FIX}"
        ) from None
    for spec in manifest.outputs:
        value = outputs[spec.name]
        expected = (len(rows), *(d for d in spec.shape[1:]))
        fits = len(value.shape) == len(expected) and all(
            want is None or got == want for got, want in zip(value.shape, expected, strict=True)
        )
        if not fits or str(value.dtype) != spec.dtype:
            raise ModelLoadError(
                f"cannot serve {where}: the smoke prediction's {spec.name!r} is "
                f"{value.dtype}{list(value.shape)}, the manifest says {spec.dtype}"
                f"{list(expected)}; {FIX}"
            )
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ModelLoadError(
                f"cannot serve {where}: the smoke prediction's {spec.name!r} is not finite "
                f"(NaN or inf on zeros, mid-range or random rows); {FIX}"
            )
    _check_kind(manifest, outputs, where)


def _check_kind(manifest: Manifest, outputs: dict[str, np.ndarray], where: str) -> None:
    """What the output kind promises: classes give one probability per label summing to 1,
    numbers give a value per row."""
    kind = OutputKind(manifest.output_kind)
    if kind is OutputKind.CLASSES:
        labels = manifest.labels or []
        probabilities = outputs.get("probabilities")
        if probabilities is None or probabilities.ndim != 2 or not labels:
            raise ModelLoadError(
                f"cannot serve {where}: a classes model needs labels and a 2-D "
                f"'probabilities' output; {FIX}"
            )
        if probabilities.shape[1] != len(labels):
            raise ModelLoadError(
                f"cannot serve {where}: the graph gives {probabilities.shape[1]} "
                f"probabilities per row, the manifest has {len(labels)} labels; {FIX}"
            )
        sums = probabilities.sum(axis=1)
        if (probabilities < 0).any() or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE:
            raise ModelLoadError(
                f"cannot serve {where}: 'probabilities' are not probabilities on the smoke "
                f"rows (row sums {np.round(sums, 4).tolist()}); {FIX}"
            )
    elif kind is OutputKind.TEXT and "sequences" not in outputs:
        raise ModelLoadError(
            f"cannot serve {where}: a text-generating model needs a 'sequences' output, the "
            f"graph has {sorted(outputs)}; {FIX}"
        )
    elif kind is OutputKind.NUMBER and "value" not in outputs:
        raise ModelLoadError(
            f"cannot serve {where}: a number model needs a 'value' output, the graph has "
            f"{sorted(outputs)}; {FIX}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
