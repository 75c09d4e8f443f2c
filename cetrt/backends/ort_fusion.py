"""The graph ONNX Runtime's CUDA provider builds: the export's layer blocks with attention and the norms fused, and
the head's ArgMax on FP16 logits (`fuse_for_gpu`). Attention is rewritten here; residual adds into norms in
cetrt/backends/ort_norms.py; the ArgMax in cetrt/backends/ort_head.py.

Each layer's attention subgraph becomes one com.microsoft.MultiHeadAttention node, with the packed shared-prefix
mask as its attention bias. The export writes attention in standard opset-17 ops
(`cetrt.families.common.attention`), which TensorRT fuses by itself. ORT's CUDA provider does not: it runs about
fifteen kernels per layer that write the [B, H, L, L] scores several times over, in FP32. MultiHeadAttention does
the same arithmetic in ORT's fused kernels (FP16 products, softmax accumulated in FP32). Grouped K/V heads are
repeated to the query's heads first, as the export's broadcast does. Only graphs that ORT builds for a GPU are
rewritten; the ONNX that TensorRT and the precision check see does not change. A graph whose attention does not
match the pattern is left as it is. SiLU x up has no op of its own in ONNX Runtime (its SwiGLU lives inside the
MoE op); its optimizer already makes the SiLU one kernel (QuickGelu), leaving one Mul.
Usage: `model, counts = fuse_for_gpu(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

from cetrt.backends.graph_edit import MS_DOMAIN, Emitter, GraphIndex, attribute, drop_unused, use_ms_domain
from cetrt.backends.ort_head import anchor_log_softmax, argmax_before_cast
from cetrt.backends.ort_norms import fuse_norms
from cetrt.switches import switch

# A build input: bump it when a rewrite changes.
FUSION = ("attention as com.microsoft.MultiHeadAttention, residual adds into com.microsoft.Skip(Simplified)"
          "LayerNormalization, the head's ArgMax before its FP32 cast, version 3")


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


def _perm(node: onnx.NodeProto) -> list[int] | None:
    perm = attribute(node, "perm")
    return list(perm) if perm is not None else None


def _match(g: GraphIndex, softmax: onnx.NodeProto) -> _Attention | None:
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


def _to_sequence_major(g: GraphIndex, emit: Emitter, name: str, heads: int, size: int) -> str:
    """[B, heads, L, D] -> [B, L, heads * D]; the export's own [B, L, heads * D] tensor where it split heads from
    one (Reshape then Transpose), else a Transpose and a Reshape."""
    swap = g.made_by(name, "Transpose")
    split = g.made_by(swap.input[0], "Reshape") if swap is not None and _perm(swap) == [0, 2, 1, 3] else None
    if split is not None and (g.shapes.get(split.input[0]) or [None])[-1] == heads * size \
            and len(g.shapes[split.input[0]]) == 3:
        return split.input[0]
    swapped = emit.node("Transpose", [name], perm=[0, 2, 1, 3])
    return emit.node("Reshape", [swapped, emit.constant([0, 0, heads * size])])


def _repeat_heads(emit: Emitter, name: str, kv_heads: int, group: int, size: int) -> str:
    """[B, L, kv_heads * D] -> [B, L, kv_heads * group * D], each K/V head repeated for its group of query heads
    (query head h reads K/V head h // group, as the export's grouping does)."""
    split = emit.node("Reshape", [name, emit.constant([0, 0, kv_heads, 1, size])])
    repeated = emit.node("Expand", [split, emit.constant([1, 1, 1, group, 1])])
    return emit.node("Reshape", [repeated, emit.constant([0, 0, kv_heads * group * size])])


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each matched attention subgraph replaced by MultiHeadAttention; and how many."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = GraphIndex(model)
    found = [a for a in (_match(g, n) for n in model.graph.node if n.op_type == "Softmax") if a is not None]
    if not found:
        return model, 0
    emit, biases, placed = Emitter(), {}, {}
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
    drop_unused(model.graph)
    use_ms_domain(model)
    return model, len(found)


def fusion() -> str:
    """What the GPU rewrites are, as a build input: FUSION, and the head's anchored form where it is asked for."""
    return FUSION + (", the head's LogSoftmax in FP16 anchored at the argmax" if anchored_head() else "")


def anchored_head() -> bool:
    """CETRT_HEAD_ANCHORED=1 at build: the head's anchored FP16 LogSoftmax (cetrt/backends/ort_head.py)."""
    return switch("CETRT_HEAD_ANCHORED", default=False)


def fuse_for_gpu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` as ORT's CUDA builds take it: attention fused, then each residual add into its norm, and
    the head's ArgMax moved before its FP32 cast, or its LogSoftmax anchored (cetrt/backends/ort_head.py); and how
    many of each."""
    model, attention = fuse_attention(model)
    model, norms = fuse_norms(model)
    model, argmax = argmax_before_cast(model)
    fused = {"attention": attention, "norms": norms, "argmax": argmax}
    if anchored_head():
        model, fused["anchored"] = anchor_log_softmax(model)
    return model, fused
