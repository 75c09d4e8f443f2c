"""Layer blocks of one size are one graph with different weights: trace two, write the rest from the first.

torch.onnx's exporter takes seconds per block (3 s for a SmolLM2 layer on 2 cores, 100 s of its 32 blocks), and
every layer block of a given number of layers traces to the same graph; only the weight initializers differ. So
the first and the last block of each size are traced; every initializer of the first is traced back to exactly
one parameter or buffer of its module (by name, or by value: the exporter folds a transposed weight into a
constant of its own), and the others, small constants, are kept. The last block, rebuilt that way from its own
module, must equal its trace initializer for initializer; if it does not, or an initializer cannot be traced back
unambiguously, every block of that size is traced as before. The blocks in between are written from the first
block's graph with their own weights: the same files a trace writes (tests/export/test_shared_graph.py).
CETRT_SHARE_LAYER_GRAPHS=0 traces every block (the benchmark's baseline: bench/export_speed.py).
Usage: `graphs = SharedGraphs(specs, module_of, examples)`; `model = graphs.model(spec, module_of(spec))` for each
block in order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from cetrt.export.onnx_export import trace_block
from cetrt.spec import BlockSpec
from cetrt.switches import switch


@dataclass(frozen=True)
class Source:
    """Where an initializer's values come from in a block's module: a parameter or buffer, maybe transposed."""

    name: str
    transposed: bool = False


def module_tensors(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def weight_sources(model: onnx.ModelProto, module: torch.nn.Module) -> dict[str, Source] | None:
    """Each weight initializer of `model` (the trace of `module`) -> its source in the module; None where one is
    ambiguous (equal to two of them) or large and from none of them (a constant the exporter computed)."""
    tensors = module_tensors(module)
    smallest = min(a.size for a in tensors.values())
    by_shape: dict[tuple, list[Source]] = defaultdict(list)
    for name, array in tensors.items():
        by_shape[array.shape].append(Source(name))
        if array.ndim == 2:
            by_shape[array.shape[::-1]].append(Source(name, transposed=True))
    sources = {}
    for initializer in model.graph.initializer:
        value = numpy_helper.to_array(initializer)
        found = [s for s in by_shape.get(value.shape, ()) if _equal(value, _values(tensors, s))]
        if initializer.name in tensors:
            found = [s for s in found if s == Source(initializer.name)]
        if len(found) == 1:
            sources[initializer.name] = found[0]
        elif found or value.size >= smallest or initializer.name in tensors:
            return None
    return sources


def with_weights(template: onnx.ModelProto, sources: dict[str, Source], module: torch.nn.Module) -> onnx.ModelProto:
    """The template's graph with each sourced initializer's values taken from `module`."""
    tensors = module_tensors(module)
    model = onnx.ModelProto()
    model.CopyFrom(template)
    for initializer in model.graph.initializer:
        source = sources.get(initializer.name)
        if source is not None:
            initializer.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(_values(tensors, source)),
                                                         initializer.name))
    return model


def same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Equal graphs and initializers (compared one by one: no second copy of a large model in memory)."""
    if len(a.graph.initializer) != len(b.graph.initializer):
        return False
    for x, y in zip(a.graph.initializer, b.graph.initializer):
        if x.SerializeToString(deterministic=True) != y.SerializeToString(deterministic=True):
            return False
    return _without_initializers(a) == _without_initializers(b)


def share_layer_graphs() -> bool:
    """Whether layer blocks of one size share one trace (the default), or, with CETRT_SHARE_LAYER_GRAPHS=0, every
    block is traced (the benchmark's baseline)."""
    return switch("CETRT_SHARE_LAYER_GRAPHS", default=True)


class SharedGraphs:
    """The ONNX model of each block, in order: layer blocks from their size's shared graph where it is proven."""

    def __init__(self, specs: list[BlockSpec], module_of: Callable[[BlockSpec], torch.nn.Module],
                 examples: dict[str, torch.Tensor]):
        self._module_of, self._examples = module_of, examples
        self._last: dict[int, BlockSpec] = {}
        for spec in specs:
            if spec.kind == "layers":
                self._last[_size(spec)] = spec
        self._shared: dict[int, tuple[onnx.ModelProto, dict[str, Source]] | None] = {}
        self._traced_last: dict[int, onnx.ModelProto] = {}
        self._enabled = share_layer_graphs()

    def model(self, spec: BlockSpec, module: torch.nn.Module) -> onnx.ModelProto:
        """The block's model; `module` is `module_of(spec)`."""
        if spec.kind != "layers":
            return trace_block(module, self._examples, spec)
        size = _size(spec)
        if size not in self._shared:
            return self._learn(spec, module)
        if spec == self._last[size] and size in self._traced_last:
            return self._traced_last.pop(size)
        shared = self._shared[size]
        if shared is None:
            return trace_block(module, self._examples, spec)
        return with_weights(*shared, module)

    def _learn(self, first: BlockSpec, module: torch.nn.Module) -> onnx.ModelProto:
        """Trace the first block of its size and, if there is another, the last; share the graph if the last
        rebuilt from the first equals its own trace."""
        size, traced = _size(first), trace_block(module, self._examples, first)
        last = self._last[size]
        self._shared[size] = None
        if last == first or not self._enabled:
            return traced
        sources = weight_sources(traced, module)
        if sources is not None:
            last_module = self._module_of(last)
            self._traced_last[size] = trace_block(last_module, self._examples, last)
            if same_model(with_weights(traced, sources, last_module), self._traced_last[size]):
                self._shared[size] = (_without_sourced_values(traced, sources), sources)
        return traced


def _size(spec: BlockSpec) -> int:
    return spec.last_layer - spec.first_layer


def _values(tensors: dict[str, np.ndarray], source: Source) -> np.ndarray:
    array = tensors[source.name]
    return array.T if source.transposed else array


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _without_initializers(model: onnx.ModelProto) -> tuple:
    """Everything of a model but its initializers, comparable, without copying them."""
    graph = model.graph
    return (graph.name, list(graph.node), list(graph.input), list(graph.output), list(graph.value_info),
            list(graph.sparse_initializer), list(model.opset_import), list(model.functions),
            list(model.metadata_props), model.ir_version, model.producer_name, model.producer_version,
            model.domain, model.model_version, model.doc_string, graph.doc_string)


def _without_sourced_values(model: onnx.ModelProto, sources: dict[str, Source]) -> onnx.ModelProto:
    """A copy of the template to keep: the weights it will never write again dropped (a 30B layer is 0.8 GB)."""
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    for initializer in kept.graph.initializer:
        if initializer.name in sources:
            initializer.ClearField("raw_data")
    return kept
