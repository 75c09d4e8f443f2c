"""Weights as inputs: one engine per block type, and a weights file per block (the build's half).

Blocks whose graphs are identical once the weights are taken out (every decoder layer block of a model, as a
rule) share one *type*: one engine is built for the type, once, and each block keeps only a weights file that
the runner reads straight into the buffers bound to those inputs (DESIGN.md, "Engines that stream").
How a block splits into graph and weights is `cetrt.formats.weights.split_block` (calib times the same split).
Usage: `blocks, types = build_types(exported, graph_of, out, build_one, progress)`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import onnx

from cetrt.files import FileRecord
from cetrt.formats.manifest import EngineBlock, EngineType
from cetrt.formats.weights import split_block, write_weight_file
from cetrt.storage import DEFAULT_REQUEST_BYTES


def build_types(exported, graph_of, out: Path, build_one, progress) -> tuple[list, list]:
    """Build one engine per block type and write each block's weights file.

    `graph_of(block)` is the path of the block's ONNX as it is to be built (calib's islands applied);
    `build_one(graph_path, engine_name, spec)` builds an engine from an ONNX file and returns its BuildResult.
    Returns (blocks, types) for the manifest. Blocks are loaded one at a time, so memory holds one block.
    """
    blocks, types, members = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="cetrt-types-") as tmp:
        for block in progress(exported.blocks):
            start = time.perf_counter()
            split = split_block(graph_of(block))
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
            record = FileRecord.of(out, weights_path, DEFAULT_REQUEST_BYTES)
            blocks.append(EngineBlock(spec=block.spec, files=(record,),
                                      build_seconds=time.perf_counter() - start, engine_type=name, weights=index))
    engine_types = [
        EngineType(name=name, files=tuple(FileRecord.of(out, f, DEFAULT_REQUEST_BYTES) for f in result.files),
                   weight_inputs=specs, blocks=tuple(indices), build_seconds=result.seconds, details=result.details)
        for name, (result, specs, indices) in members.items()
    ]
    return blocks, engine_types
