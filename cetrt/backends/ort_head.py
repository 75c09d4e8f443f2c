"""The head as ONNX Runtime's CUDA builds take it: ArgMax reads the FP16 logits, not their FP32 copy.

The export casts an FP16 model's logits to FP32 once, for LogSoftmax, and its ArgMax (the greedy flag) reads that
FP32 copy too: on SmolLM2 a slot's 49,152 logits are 196 KB in FP32, and the head is a third of a run's compute
for 1% of its FLOP (README, "SmolLM2 on an H100"). Casting FP16 to FP32 is exact and keeps the order, ties
included, so ArgMax over the FP16 logits picks the same index from half the bytes. LogSoftmax stays in FP32.
Only graphs that ORT builds for a GPU are rewritten (cetrt/backends/ort_fusion.py); TensorRT sees the export.
Usage: `model, count = argmax_before_cast(model)`.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from cetrt.backends.graph_edit import GraphIndex, attribute, drop_unused

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
