"""The head as ONNX Runtime's CUDA builds take it: ArgMax reads the FP16 logits, not their FP32 copy.

The export casts an FP16 model's logits to FP32 once, for LogSoftmax, and its ArgMax (the greedy flag) reads that
FP32 copy too: on SmolLM2 a slot's 49,152 logits are 196 KB in FP32, and the head is a third of a run's compute
for 1% of its FLOP (README, "SmolLM2 on an H100"). Casting FP16 to FP32 is exact and keeps the order, ties
included, so ArgMax over the FP16 logits picks the same index from half the bytes. LogSoftmax stays in FP32.
Only graphs that ORT builds for a GPU are rewritten (cetrt/backends/ort_fusion.py); TensorRT sees the export.

`anchor_log_softmax` (CETRT_HEAD_ANCHORED=1 at build) goes further: LogSoftmax
over the FP16 logits (ORT's CUDA kernel accumulates in FP32 and writes FP16: no FP32 copy of the logits at all),
of which only the argmax's log-probability is kept; the target's is the target's logit minus the argmax's, exact
in FP32, plus that one value. Its one rounding is of log(sum of exp(logit - max)), between 0 and log(vocab): at
most 0.004 nats for a 49,152-token vocabulary and finer where the model is confident, against up to 0.008 for a
target's log-probability rounded to FP16 itself (bench/head_fp16_rounding.py measured what that does). Off by
default: on an H100 it made SmolLM2's head 1.8x and its run 1.13x faster, but put acc_norm on all items 0.03 points
from FP32, one item past issue 16's 0.02 (README, "The anchored FP16 head").
Usage: `model, count = argmax_before_cast(model)`; `model, count = anchor_log_softmax(model)`.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from cetrt.backends.graph_edit import Emitter, GraphIndex, attribute, drop_unused, sort_nodes

# A cast that every value of the source type survives exactly, in order: ArgMax may read the source instead.
_EXACT_WIDENING = {(TensorProto.FLOAT16, TensorProto.FLOAT), (TensorProto.BFLOAT16, TensorProto.FLOAT),
                   (TensorProto.FLOAT16, TensorProto.DOUBLE), (TensorProto.FLOAT, TensorProto.DOUBLE)}


def argmax_before_cast(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose ArgMax nodes read the tensor before an exact widening Cast; and how many."""
    if not any(node.op_type == "ArgMax" for node in model.graph.node):  # layer blocks: no copy, no inference
        return model, 0
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = GraphIndex(model)
    moved = 0
    for node in model.graph.node:
        if node.op_type != "ArgMax":
            continue
        cast = g.made_by(node.input[0], "Cast")
        if cast is not None and (g.types.get(cast.input[0]), attribute(cast, "to")) in _EXACT_WIDENING:
            node.input[0] = cast.input[0]
            moved += 1
    drop_unused(model.graph)  # a Cast that only the ArgMax read
    return model, moved


def anchor_log_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose FP32 LogSoftmax over FP16 logits, read only by a GatherElements of the targets along
    the last axis, becomes the anchored FP16 form (module docstring); and how many."""
    if not any(node.op_type == "LogSoftmax" for node in model.graph.node):
        return model, 0
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = GraphIndex(model)
    emit = Emitter("cetrt_anchored")
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        cast = g.made_by(node.input[0], "Cast") if node.op_type == "LogSoftmax" else None
        if cast is None or (g.types.get(cast.input[0]), attribute(cast, "to")) != (TensorProto.FLOAT16,
                                                                                    TensorProto.FLOAT):
            continue
        gather = g.only_reader(node.output[0], "GatherElements")
        rank = len(g.shapes.get(cast.input[0]) or [])
        last = {-1, rank - 1}
        if gather is None or attribute(node, "axis", -1) not in last or attribute(gather, "axis", 0) not in last:
            continue
        logits, target, axis = cast.input[0], gather.input[1], attribute(gather, "axis", 0)
        start = len(emit.nodes)
        all_logprobs = emit.node("LogSoftmax", [logits], axis=axis)
        best = _argmax_kept(g, emit, logits, axis, last)
        wide = {name: emit.node("Cast", [emit.node("GatherElements", [source, index], axis=axis)],
                                to=TensorProto.FLOAT)
                for name, source, index in (("best_logprob", all_logprobs, best), ("best_logit", logits, best),
                                            ("target_logit", logits, target))}
        below_best = emit.node("Sub", [wide["target_logit"], wide["best_logit"]])
        emit.node("Add", [below_best, wide["best_logprob"]], output=gather.output[0])
        replaced[id(gather)] = emit.nodes[start:]
    if not replaced:
        return model, 0
    nodes = [new for node in model.graph.node for new in replaced.get(id(node), [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(emit.initializers)
    drop_unused(model.graph)  # the FP32 LogSoftmax, and the Cast if nothing else reads it
    sort_nodes(model.graph)
    return model, len(replaced)


def _argmax_kept(g: GraphIndex, emit: Emitter, logits: str, axis: int, last: set[int]) -> str:
    """The argmax of `logits` along `axis` (the last: its spellings in `last`), that axis kept: the greedy flag's
    ArgMax where the graph has one over the same tensor and axis (after argmax_before_cast it reads the FP16
    logits), so the logits are not read a second time; else a new ArgMax."""
    for node in g.consumers.get(logits, []):
        if node.op_type == "ArgMax" and attribute(node, "axis", 0) in last:
            if attribute(node, "keepdims", 1):
                return node.output[0]
            return emit.node("Unsqueeze", [node.output[0], emit.constant([axis])])
    return emit.node("ArgMax", [logits], axis=axis, keepdims=1)
