"""Graphs of one package that hold the same weights store them once, as ONNX external data.

A seq2seq package has two decoder graphs (the first step, and the steps with a cache) that
carry the same decoder weights: about 140 MB each for the MiniLM summariser. Written
inline, every copy is a second copy on disk, in the registry, in the bucket and in the
image. :func:`share_weights` moves every initializer of at least ``min_bytes`` into one
file beside the graphs (ONNX's standard external-data layout: a ``location``, an
``offset`` and a ``length`` per tensor), writing each distinct tensor once; a tensor is
the same when its type, shape and bytes are (so constants that the exporter folded alike
in both graphs are shared too). ONNX Runtime reads external data relative to the graph's
folder, so the graphs load as before, from the package folder or a copy of it.

The package's manifest checksums the weights file like any other, so a changed byte fails
the package's verification. Torch-free: ``onnx`` and ``numpy`` only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: tensors smaller than this stay inside their graph (shapes, scalars, small constants)
MIN_SHARED_BYTES = 1024
#: each tensor starts at a multiple of this, so that ONNX Runtime can map it in place
ALIGNMENT = 4096


def share_weights(
    folder: Path, graphs: list[str], weights_file: str, min_bytes: int = MIN_SHARED_BYTES
) -> dict[str, int]:
    """Rewrite ``graphs`` (file names in ``folder``) so that their large initializers live
    once in ``folder / weights_file``. Returns sizes in bytes: ``weights`` (the file),
    ``before`` (the graphs as they were) and ``after`` (graphs and weights file)."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    before = sum((folder / name).stat().st_size for name in graphs)
    offsets: dict[tuple[int, tuple[int, ...], str], tuple[int, int]] = {}
    models = {name: onnx.load(str(folder / name)) for name in graphs}
    weights_tmp = folder / f".{weights_file}.tmp"
    with weights_tmp.open("wb") as weights:
        for model in models.values():
            for tensor in model.graph.initializer:
                data = numpy_helper.to_array(tensor).tobytes()
                if len(data) < min_bytes:
                    continue
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest())
                if key not in offsets:
                    start = -weights.tell() % ALIGNMENT
                    weights.write(b"\0" * start)
                    offsets[key] = (weights.tell(), len(data))
                    weights.write(data)
                offset, length = offsets[key]
                if not tensor.HasField("raw_data"):  # set_external_data needs it filled
                    tensor.raw_data = data
                set_external_data(tensor, location=weights_file, offset=offset, length=length)
                _clear_data(tensor)
                tensor.data_location = onnx.TensorProto.EXTERNAL
    # The weights first: a graph is never left pointing at a file that is not there.
    weights_tmp.replace(folder / weights_file)
    for name, model in models.items():
        # Serialised as is: onnx.save would try to write the external data a second time.
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(model.SerializeToString())
        tmp.replace(folder / name)
    after = sum((folder / name).stat().st_size for name in [*graphs, weights_file])
    return {"weights": (folder / weights_file).stat().st_size, "before": before, "after": after}


def graph_bytes(path: Path) -> int:
    """A graph's size as ONNX Runtime loads it: its file plus the external data its
    tensors point at (a shared weights file counts once per graph that uses it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            fields = {entry.key: entry.value for entry in tensor.external_data}
            external += int(fields.get("length", 0))
    return path.stat().st_size + external


def _clear_data(tensor: object) -> None:
    """Drop a tensor's inline data, whichever field the exporter filled."""
    for field in (
        "raw_data",
        "float_data",
        "int32_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "string_data",
    ):
        tensor.ClearField(field)  # type: ignore[attr-defined]
