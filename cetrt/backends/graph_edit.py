"""Lookups and edits for rewriting an exported ONNX graph: the fusions ONNX Runtime's CUDA builds apply
(attention: cetrt/backends/ort_fusion.py; residual adds into norms: cetrt/backends/ort_norms.py).

`GraphIndex` answers who makes and who reads a tensor, its constant value, inferred shape and type; `Emitter`
names new nodes and constants uniquely; `drop_unused` and `sort_nodes` tidy a graph after nodes were replaced.
Usage: `g = GraphIndex(model); cast = g.made_by(name, "Cast")`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
PREFIX = "cetrt_fused"


class GraphIndex:
    """Lookups over a graph: who makes a tensor, who reads it, constants, and inferred shapes and types."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {t.name: t for t in graph.initializer if not t.external_data}  # weights may be elsewhere
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes, self.types = {}, {}
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            tensor = info.type.tensor_type
            self.types[info.name] = tensor.elem_type
            self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        for t in graph.initializer:  # weights inside the graph (external data too: dims and type are in the graph)
            self.types.setdefault(t.name, t.data_type)
            self.shapes.setdefault(t.name, list(t.dims))

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def skip_cast_back(self, name: str) -> str:
        """The tensor before a Cast (the export casts to FP32 for softmax and norms, and back)."""
        cast = self.made_by(name, "Cast")
        return cast.input[0] if cast is not None else name

    def skip_cast_forward(self, name: str) -> str:
        cast = self.only_reader(name, "Cast")
        return cast.output[0] if cast is not None else name

    def scalar(self, name: str) -> float | None:
        tensor = self.constants.get(name)
        if tensor is None or int(np.prod(tensor.dims)) != 1:
            return None
        return float(numpy_helper.to_array(tensor).reshape(-1)[0])


def attribute(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class Emitter:
    """New nodes and constants, named uniquely."""

    def __init__(self, prefix: str = PREFIX):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._prefix = prefix
        self._count = 0

    def name(self, what: str) -> str:
        self._count += 1
        return f"{self._prefix}_{what}_{self._count}"

    def constant(self, values: list[int]) -> str:
        name = self.name("shape")
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op_type: str, inputs: list[str], domain: str = "", output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), domain=domain, **attrs))
        return out


def use_ms_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def drop_unused(graph: onnx.GraphProto) -> None:
    """Nodes, constants and shape annotations no graph output depends on any more."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    live = needed | {i.name for i in graph.input}
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {out for node in graph.node for out in node.output}
    infos = [v for v in graph.value_info if v.name in produced or v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def sort_nodes(graph: onnx.GraphProto) -> None:
    """The nodes in an order where each comes after what it reads, keeping the given order where it already is
    (a replacement node may have been placed before an input's producer)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    nodes = list(graph.node)
    placed, order, visiting = set(), [], set()

    def place(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in placed:
                continue
            if expanded:
                placed.add(j)
                visiting.discard(j)
                order.append(j)
                continue
            if j in visiting:
                raise ValueError(f"graph has a cycle through node {nodes[j].name or nodes[j].op_type}")
            visiting.add(j)
            stack.append((j, True))
            for name in reversed(nodes[j].input):
                k = producer.get(name)
                if k is not None and k not in placed:
                    stack.append((k, False))

    for i in range(len(nodes)):
        place(i)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
