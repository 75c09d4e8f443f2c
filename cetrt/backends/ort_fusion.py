"""Attention fused for ONNX Runtime's CUDA provider: each layer's attention subgraph becomes one
com.microsoft.MultiHeadAttention node, with the packed shared-prefix mask as its attention bias.

The export writes attention in standard opset-17 ops (`cetrt.families.common.attention`), which TensorRT fuses
by itself. ORT's CUDA provider does not: it runs about fifteen kernels per layer that write the [B, H, L, L]
scores several times over, in FP32. MultiHeadAttention does the same arithmetic in ORT's fused kernels (FP16
products, softmax accumulated in FP32). Grouped K/V heads are repeated to the query's heads first, as the
export's broadcast does. Only graphs that ORT builds for a GPU are rewritten; the ONNX that TensorRT and the
precision check see does not change. A graph whose attention does not match the pattern is left as it is.
Usage: `model, fused = fuse_attention(model)`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
FUSION = "attention as com.microsoft.MultiHeadAttention, version 1"  # a build input: bump it when the rewrite changes
_PREFIX = "cetrt_fused"


@dataclass(frozen=True)
class _Attention:
    """One matched attention subgraph: its inputs in [B, heads, L, D], the mask ([B, 1, L, L], or [B, L, L] where
    the exporter merged the two Unsqueezes of a block's only layer into one: `mask_needs_head_axis`), the scale,
    and the Reshape whose [B, L, heads * D] output the fused node produces instead."""

    query: str
    key: str
    value: str
    mask: str
    scale: float
    output: onnx.NodeProto
    mask_needs_head_axis: bool = False


class _Graph:
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

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def skip_cast_back(self, name: str) -> str:
        """The tensor before a Cast (the export casts scores to FP32 and probabilities back)."""
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


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Attention | None:
    """softmax(Q' K^T + mask) V, as the export writes it, or None."""
    add = g.made_by(softmax.input[0], "Add")
    if add is None:
        return None
    for scores_name, mask_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        scores = g.made_by(g.skip_cast_back(scores_name), "MatMul")
        mask = g.made_by(mask_name, "Unsqueeze")
        if scores is not None and mask is not None:
            break
    else:
        return None
    grouped_q, keys_t = (g.made_by(name, op) for name, op in zip(scores.input, ("Reshape", "Transpose")))
    scaled = g.made_by(grouped_q.input[0], "Mul") if grouped_q is not None else None
    keys = g.made_by(keys_t.input[0], "Unsqueeze") if keys_t is not None and _perm(keys_t) == [0, 1, 2, 4, 3] else None
    if scaled is None or keys is None:
        return None
    factors = [(g.scalar(b), a) for a, b in (scaled.input, scaled.input[::-1])]
    scale, query = next(((s, q) for s, q in factors if s is not None), (None, None))
    probs_mm = g.only_reader(g.skip_cast_forward(softmax.output[0]), "MatMul")
    if scale is None or probs_mm is None:
        return None
    values = g.made_by(probs_mm.input[1], "Unsqueeze")
    heads = g.only_reader(probs_mm.output[0], "Reshape")
    swap = g.only_reader(heads.output[0], "Transpose") if heads is not None else None
    merged = g.only_reader(swap.output[0], "Reshape") if swap is not None and _perm(swap) == [0, 2, 1, 3] else None
    if values is None or merged is None:
        return None
    mask_rank = len(g.shapes.get(mask.input[0]) or [])
    axes = g.constants.get(mask.input[1]) if len(mask.input) > 1 else None
    merged_unsqueeze = mask_rank == 3 and axes is not None and numpy_helper.to_array(axes).tolist() == [1, 2]
    attention = _Attention(query=query, key=keys.input[0], value=values.input[0], mask=mask.input[0], scale=scale,
                           output=merged, mask_needs_head_axis=merged_unsqueeze)
    ranks = [len(g.shapes.get(name) or []) for name in (attention.query, attention.key, attention.value)]
    return attention if ranks == [4, 4, 4] and (mask_rank == 4 or merged_unsqueeze) else None


class _Emitter:
    """New nodes and constants, named uniquely."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, what: str) -> str:
        self._count += 1
        return f"{_PREFIX}_{what}_{self._count}"

    def constant(self, values: list[int]) -> str:
        name = self.name("shape")
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op_type: str, inputs: list[str], domain: str = "", output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), domain=domain, **attrs))
        return out


def _to_sequence_major(g: _Graph, emit: _Emitter, name: str, heads: int, size: int) -> str:
    """[B, heads, L, D] -> [B, L, heads * D]; the export's own [B, L, heads * D] tensor where it split heads from
    one (Reshape then Transpose), else a Transpose and a Reshape."""
    swap = g.made_by(name, "Transpose")
    split = g.made_by(swap.input[0], "Reshape") if swap is not None and _perm(swap) == [0, 2, 1, 3] else None
    if split is not None and (g.shapes.get(split.input[0]) or [None])[-1] == heads * size \
            and len(g.shapes[split.input[0]]) == 3:
        return split.input[0]
    swapped = emit.node("Transpose", [name], perm=[0, 2, 1, 3])
    return emit.node("Reshape", [swapped, emit.constant([0, 0, heads * size])])


def _repeat_heads(emit: _Emitter, name: str, kv_heads: int, group: int, size: int) -> str:
    """[B, L, kv_heads * D] -> [B, L, kv_heads * group * D], each K/V head repeated for its group of query heads
    (query head h reads K/V head h // group, as the export's grouping does)."""
    split = emit.node("Reshape", [name, emit.constant([0, 0, kv_heads, 1, size])])
    repeated = emit.node("Expand", [split, emit.constant([1, 1, 1, group, 1])])
    return emit.node("Reshape", [repeated, emit.constant([0, 0, kv_heads * group * size])])


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each matched attention subgraph replaced by MultiHeadAttention; and how many."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    found = [a for a in (_match(g, n) for n in model.graph.node if n.op_type == "Softmax") if a is not None]
    if not found:
        return model, 0
    emit, biases, placed = _Emitter(), {}, {}
    for attention in found:
        start = len(emit.nodes)
        _, heads, _, size = g.shapes[attention.query]
        kv_heads = g.shapes[attention.key][1]
        if heads is None or size is None or kv_heads is None or heads % kv_heads:
            raise ValueError(f"attention at {attention.output.name}: heads of unknown or unequal grouping")
        query = _to_sequence_major(g, emit, attention.query, heads, size)
        key = _to_sequence_major(g, emit, attention.key, kv_heads, size)
        value = _to_sequence_major(g, emit, attention.value, kv_heads, size)
        if kv_heads != heads:
            key = _repeat_heads(emit, key, kv_heads, heads // kv_heads, size)
            value = _repeat_heads(emit, value, kv_heads, heads // kv_heads, size)
        dtype = g.types[attention.query]
        if (attention.mask, dtype) not in biases:  # one cast of the mask per graph, shared by its layers
            bias = attention.mask
            if attention.mask_needs_head_axis:
                bias = emit.node("Unsqueeze", [bias, emit.constant([1])])
            same_type = g.types.get(attention.mask) == dtype
            biases[(attention.mask, dtype)] = bias if same_type else emit.node("Cast", [bias], to=dtype)
        emit.node("MultiHeadAttention", [query, key, value, "", "", biases[(attention.mask, dtype)]],
                  domain=MS_DOMAIN, output=attention.output.output[0], num_heads=heads, scale=attention.scale)
        placed[id(attention.output)] = emit.nodes[start:]
    nodes = []
    for node in model.graph.node:
        nodes.extend(placed.get(id(node), [node]))  # the fused nodes where the merging Reshape was
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(emit.initializers)
    _drop_unused(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, len(found)


def _drop_unused(graph: onnx.GraphProto) -> None:
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
