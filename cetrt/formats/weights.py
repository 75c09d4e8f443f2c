"""Weight files: one block's weights as raw arrays, for engines whose weights are inputs (the one writer and reader).

A `.weights` file is every weight tensor of one block, back to back, each starting at a 4 KiB offset so a
direct (O_DIRECT) read lands them aligned and the arrays are views of the read buffer, not copies. The index
(name, offset, dtype, shape per tensor) lives in manifest.json beside the file's size and sha256.
What a weight is, and how an exported block splits into its weight-free graph and its weights, is decided here
too (`split_block`): the build writes the files from that split and calib times binding them.
Weights are the floating-point initializers with at least one dimension; everything else (shapes, axes,
scalars) stays in the graph and is part of what makes two graphs the same type (`signature`).
Usage: `index = write_weight_file(path, arrays)`; `arrays = weights_from_bytes(data, index)`;
`split = split_block(onnx_path)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cetrt.spec import TensorSpec

if TYPE_CHECKING:  # onnx only where a graph is split (build, calib): importing it costs ce-run 1.3 s on 2 cores
    import onnx

_ALIGN = 4096


@dataclass(frozen=True)
class WeightEntry:
    name: str  # the engine input it feeds
    offset: int
    dtype: str  # NumPy dtype name: "float16", "float32"
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "offset": self.offset, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "WeightEntry":
        return cls(data["name"], int(data["offset"]), data["dtype"], tuple(int(d) for d in data["shape"]))


def write_weight_file(path: Path, arrays: dict[str, np.ndarray]) -> tuple[WeightEntry, ...]:
    """Write `arrays` in order, each at an aligned offset; returns the index to record."""
    index, offset = [], 0
    with open(path, "wb") as f:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            f.seek(offset)
            f.write(array.tobytes())
            index.append(WeightEntry(name, offset, array.dtype.name, tuple(array.shape)))
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
    return tuple(index)


def weights_from_bytes(data: bytes, index: tuple[WeightEntry, ...]) -> dict[str, np.ndarray]:
    """Read-only views of `data`, one per entry (no copy)."""
    return {
        e.name: np.frombuffer(data, dtype=np.dtype(e.dtype), count=int(np.prod(e.shape, dtype=np.int64)),
                              offset=e.offset).reshape(e.shape)
        for e in index
    }


@dataclass
class SplitBlock:
    graph: onnx.ModelProto  # the block with its weights as graph inputs
    weights: dict[str, np.ndarray]  # in graph order
    signature: str  # equal for blocks that can share one engine

    @property
    def weight_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, a.dtype.name, tuple(a.shape)) for name, a in self.weights.items())


def is_weight(initializer: onnx.TensorProto) -> bool:
    import onnx

    return initializer.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(initializer.dims) >= 1


def split_block(onnx_path: Path) -> SplitBlock:
    """Load the block (with its external data) and move its weights from initializers to graph inputs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if is_weight(i)}
    kept = [i for i in model.graph.initializer if not is_weight(i)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name, array in weights.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(array.shape)))
    return SplitBlock(graph=model, weights=weights, signature=signature(model))


def signature(model: onnx.ModelProto) -> str:
    """A digest of the weight-free graph, names and doc strings of nodes left out (they may carry layer numbers)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        node.name = ""
        node.doc_string = ""
    copy.graph.name = ""
    copy.graph.doc_string = ""
    del copy.metadata_props[:]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]
