"""Weights as inputs: split each exported block into its graph (weights turned into inputs) and its weights.

Blocks whose graphs are identical once the weights are taken out (every decoder layer block of a model, as a
rule) share one *type*: one engine is built for the type, once, and each block keeps only a weights file that
the runner reads straight into the buffers bound to those inputs (DESIGN.md, "Engines that stream").
Weights are the floating-point initializers with at least one dimension; everything else (shapes, axes,
scalars) stays in the graph and is part of what makes two graphs the same type.
Usage: `split = split_block(onnx_path)`; `split.signature` groups blocks; `split.graph` is built once per type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cetrt.files import FileRecord
from cetrt.manifest import EngineBlock, EngineType
from cetrt.spec import TensorSpec
from cetrt.weights import write_weight_file

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass
class SplitBlock:
    graph: onnx.ModelProto  # the block with its weights as graph inputs
    weights: dict[str, np.ndarray]  # in graph order
    signature: str  # equal for blocks that can share one engine

    @property
    def weight_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, a.dtype.name, tuple(a.shape)) for name, a in self.weights.items())


def is_weight(initializer: onnx.TensorProto) -> bool:
    return initializer.data_type in _FLOATS and len(initializer.dims) >= 1


def split_block(onnx_path: Path) -> SplitBlock:
    """Load the block (with its external data) and move its weights from initializers to graph inputs."""
    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if is_weight(i)}
    kept = [i for i in model.graph.initializer if not is_weight(i)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name, array in weights.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(array.shape)))
    return SplitBlock(graph=model, weights=weights, signature=_signature(model))


def _signature(model: onnx.ModelProto) -> str:
    """A digest of the weight-free graph, names and doc strings of nodes left out (they may carry layer numbers)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        node.name = ""
        node.doc_string = ""
    copy.graph.name = ""
    copy.graph.doc_string = ""
    del copy.metadata_props[:]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def build_types(exported, onnx_dir: Path, out: Path, build_one, progress) -> tuple[list, list]:
    """Build one engine per block type and write each block's weights file.

    `build_one(graph_path, engine_name, spec)` builds an engine from an ONNX file and returns its BuildResult.
    Returns (blocks, types) for the manifest. Blocks are loaded one at a time, so memory holds one block.
    """
    blocks, types, members = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="cetrt-types-") as tmp:
        for block in progress(exported.blocks):
            start = time.perf_counter()
            split = split_block(onnx_dir / block.onnx_file.path)
            name = types.get(split.signature)
            if name is None:
                name = types[split.signature] = f"type_{len(types):02d}"
                graph_path = Path(tmp) / f"{name}.onnx"
                onnx.save(split.graph, str(graph_path))
                spec = dataclasses.replace(block.spec, inputs=block.spec.inputs + split.weight_specs)
                members[name] = (build_one(graph_path, name, spec), split.weight_specs, [])
            members[name][2].append(block.spec.index)
            weights_path = out / f"block_{block.spec.index:03d}.weights"
            index = write_weight_file(weights_path, split.weights)
            blocks.append(EngineBlock(spec=block.spec, files=(FileRecord.of(out, weights_path),),
                                      build_seconds=time.perf_counter() - start, engine_type=name, weights=index))
    engine_types = [
        EngineType(name=name, files=tuple(FileRecord.of(out, f) for f in result.files), weight_inputs=specs,
                   blocks=tuple(indices), build_seconds=result.seconds, details=result.details)
        for name, (result, specs, indices) in members.items()
    ]
    return blocks, engine_types
