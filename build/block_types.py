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
from cetrt.merging import layer_groups, merge_layers
from cetrt.storage import DEFAULT_REQUEST_BYTES


def build_types(exported, graph_of, out: Path, build_one, progress, layers_per_engine: int = 1) -> tuple[list, list]:
    """Build one engine per block type and write each block's weights file.

    `graph_of(block)` is the path of the block's ONNX as it is to be built (calib's islands applied);
    `build_one(graph_path, engine_name, spec)` builds an engine from an ONNX file and returns its BuildResult.
    Consecutive layer blocks are merged into engines of `layers_per_engine` layers (cetrt.merging): the
    manifest's blocks are the merged ones, numbered in order. Returns (blocks, types) for the manifest. Memory
    holds one merged block at a time.
    """
    blocks, types, members = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="cetrt-types-") as tmp:
        for index, group in enumerate(progress(layer_groups(list(exported.blocks), layers_per_engine))):
            start = time.perf_counter()
            split = merge_layers([split_block(graph_of(block)) for block in group])
            block = group[0]
            spec = dataclasses.replace(block.spec, index=index, last_layer=group[-1].spec.last_layer,
                                       outputs=group[-1].spec.outputs)
            name = types.get(split.signature)
            if name is None:
                name = types[split.signature] = f"type_{len(types):02d}"
                graph_path = Path(tmp) / f"{name}.onnx"
                onnx.save(split.graph, str(graph_path))
                engine_spec = dataclasses.replace(spec, inputs=spec.inputs + split.weight_specs)
                members[name] = (build_one(graph_path, name, engine_spec), split.weight_specs, [])
            members[name][2].append(spec.index)
            weights_path = out / f"block_{spec.index:03d}.weights"
            entries = write_weight_file(weights_path, split.weights)
            record = FileRecord.of(out, weights_path, DEFAULT_REQUEST_BYTES)
            blocks.append(EngineBlock(spec=spec, files=(record,),
                                      build_seconds=time.perf_counter() - start, engine_type=name, weights=entries))
    engine_types = [
        EngineType(name=name, files=tuple(FileRecord.of(out, f, DEFAULT_REQUEST_BYTES) for f in result.files),
                   weight_inputs=specs, blocks=tuple(indices), build_seconds=result.seconds, details=result.details)
        for name, (result, specs, indices) in members.items()
    ]
    return blocks, engine_types
