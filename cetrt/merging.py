"""Merging consecutive layer blocks into one engine's graph: fewer engine calls per batch, the same arithmetic.

Every engine call has a fixed cost on the host (ONNX Runtime's run setup, binding, the end-of-run
synchronisation) during which the GPU idles; a block of M layers pays it once for M layers. The export stays
one layer a block (what TensorRT 10.3 and the precision check see); the build chains M weight-free layer graphs
(`cetrt.formats.weights.split_block`), each layer's weights renamed `l<k>.<name>` so they stay separate inputs,
the shared batch inputs (positions, mask) shared, and layer k's `hidden_out` feeding layer k+1's `hidden`.
ONNX Runtime's common-subexpression elimination then computes what the layers share (rotary cos/sin) once.
calib measures the per-call cost and chooses M (`calib.schedule`); `ce-build --layers-per-engine` overrides it.
Usage: `merged = merge_layers([split_a, split_b])`; `groups = layer_groups(blocks, 4)` (`grouped` by layer counts);
`weights = merged_weights([weights_a, weights_b])`.
"""

from __future__ import annotations

import onnx

from cetrt.formats.weights import SplitBlock, signature
from cetrt.spec import HIDDEN, HIDDEN_OUT

_PREFIX = "l{}."


def merge_layers(splits: list[SplitBlock]) -> SplitBlock:
    """One graph computing `splits` in order (each a weight-free layer block: hidden, batch inputs and its
    weights in, hidden_out out); a single split is returned as it is."""
    if len(splits) == 1:
        return splits[0]
    first = splits[0].graph
    graph = onnx.helper.make_graph([], "layers", [], [])
    batch_inputs = [i for i in first.graph.input if i.name not in splits[0].weights]
    graph.input.extend(batch_inputs)  # hidden first, then the batch inputs, as the block spec lists them
    shared = {i.name for i in batch_inputs} - {HIDDEN}
    for k, split in enumerate(splits):
        prefix, last = _PREFIX.format(k), k == len(splits) - 1

        def rename(name: str, prefix=prefix, k=k, last=last) -> str:
            if not name or name in shared:
                return name
            if name == HIDDEN:
                return HIDDEN if k == 0 else _PREFIX.format(k - 1) + HIDDEN_OUT
            if name == HIDDEN_OUT and last:
                return HIDDEN_OUT
            return prefix + name

        source = split.graph.graph
        for node in source.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + (node.name or f"{node.op_type}_{len(graph.node)}")
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
            graph.node.append(copy)
        for init in source.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            graph.initializer.append(copy)
        for info in source.value_info:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(info)
            copy.name = rename(info.name)
            graph.value_info.append(copy)
    weights = merged_weights([split.weights for split in splits])
    for name, array in weights.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(array.shape)))
    graph.output.extend(splits[-1].graph.graph.output)
    model = onnx.helper.make_model(graph, opset_imports=list(first.opset_import), ir_version=first.ir_version)
    model.metadata_props.extend(first.metadata_props)
    return SplitBlock(graph=model, weights=weights, signature=signature(model))


def merged_weights(layers: list[dict]) -> dict:
    """The weights of a merged engine, by input name, from each layer's own (in order); one layer's as they are,
    as `merge_layers` leaves one split as it is."""
    if len(layers) == 1:
        return dict(layers[0])
    return {_PREFIX.format(k) + name: array for k, weights in enumerate(layers) for name, array in weights.items()}


def layer_groups(blocks: list, layers_per_engine: int) -> list[list]:
    """Consecutive layer blocks in runs of `layers_per_engine` layers (the last run may be shorter); every other
    block (embed, head) is a run of its own."""
    sizes = [b.spec.last_layer - b.spec.first_layer if b.spec.kind == "layers" else None for b in blocks]
    return [[blocks[i] for i in run] for run in grouped(sizes, layers_per_engine)]


def grouped(layers: list[int | None], layers_per_engine: int) -> list[list[int]]:
    """The grouping rule on its own, by index: `layers[i]` is block i's decoder layers, None for a block that is
    not a layer block. A layer block joins the run before it while that run is of layer blocks holding fewer than
    `layers_per_engine` layers. ce-predict counts engines with it for models it never exported."""
    runs: list[list[int]] = []
    for i, size in enumerate(layers):
        previous = runs[-1] if runs else None
        if (size is not None and previous and layers[previous[-1]] is not None
                and sum(layers[j] for j in previous) < layers_per_engine):
            previous.append(i)
        else:
            runs.append([i])
    return runs
