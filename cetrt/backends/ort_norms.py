"""Each residual add that feeds a norm, fused into that norm, for ONNX Runtime's CUDA provider.

A decoder layer adds its attention's output to the residual stream and normalises the sum for its MLP; it adds
the MLP's output and the next layer normalises that sum. The export writes each add and each norm (RMSNorm or
LayerNorm, statistics in FP32: `cetrt.families.common`) in standard ops. ORT's optimizer fuses a norm into one
kernel but leaves the add as a kernel of its own, which writes the sum for the norm to read back.
com.microsoft.SkipSimplifiedLayerNormalization (RMSNorm) and SkipLayerNormalization (LayerNorm) read the two
addends once and write both the norm and the sum (which the next residual add still reads): the same arithmetic,
the sum in the model's dtype and the statistics in FP32. A layer block's last add (its output) and its first norm
(of its input) have nothing to pair with and stay as they are. ORT's CPU provider implements both ops, so tests
compare the rewritten graph with the export's there.
Usage: `model, fused = fuse_norms(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from cetrt.backends.graph_edit import (MS_DOMAIN, PREFIX, GraphIndex, attribute, drop_unused, sort_nodes,
                                      use_ms_domain)

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


@dataclass(frozen=True)
class _Norm:
    """One residual add and the norm of its sum: `output` is the norm in the model's dtype, `readers` the ids of
    the norm's nodes that read the sum (they go with the norm)."""

    add: onnx.NodeProto
    op_type: str  # the fused op
    weight: str
    bias: str | None
    epsilon: float
    output: str
    readers: tuple[int, ...]


def _reduces_last_axis(g: GraphIndex, node: onnx.NodeProto) -> bool:
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1:  # opset 18 and later: axes as an input
        axes = [int(g.scalar(node.input[1]))] if g.scalar(node.input[1]) is not None else None
    rank = len(g.shapes.get(node.input[0]) or [])
    return axes is not None and len(axes) == 1 and axes[0] in (-1, rank - 1) and attribute(node, "keepdims", 1) == 1


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The second input of a two-input node, given the first."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _rms_norm(g: GraphIndex, power: onnx.NodeProto) -> _Norm | None:
    """x / sqrt(mean(x^2) + eps), cast back, times the weight (`rms_norm`), of a residual add's sum."""
    x = power.input[0]
    mean = g.only_reader(power.output[0], "ReduceMean")
    if g.scalar(power.input[1]) != 2.0 or mean is None or not _reduces_last_axis(g, mean):
        return None
    plus = g.only_reader(mean.output[0], "Add")
    epsilon = g.scalar(_other(plus, mean.output[0])) if plus is not None else None
    root = g.only_reader(plus.output[0], "Sqrt") if plus is not None else None
    divide = g.only_reader(root.output[0], "Div") if root is not None else None
    if epsilon is None or divide is None or list(divide.input) != [x, root.output[0]]:
        return None
    normed = g.skip_cast_forward(divide.output[0])
    scale = g.only_reader(normed, "Mul")
    weight = _other(scale, normed) if scale is not None else None
    if weight is None:
        return None
    return _of_residual(g, x, (power, divide), "SkipSimplifiedLayerNormalization", weight, None, epsilon,
                        scale.output[0])


def _layer_norm(g: GraphIndex, norm: onnx.NodeProto) -> _Norm | None:
    """LayerNormalization over the last axis (in FP32 between casts: `layer_norm`) of a residual add's sum."""
    if attribute(norm, "axis", -1) not in (-1, len(g.shapes.get(norm.input[0]) or []) - 1) or len(norm.input) < 2:
        return None
    if any(name and g.consumers.get(name) for name in norm.output[1:]):
        return None  # its mean or inverse deviation is read: the fused op does not give them
    weight = g.skip_cast_back(norm.input[1])
    bias = g.skip_cast_back(norm.input[2]) if len(norm.input) > 2 and norm.input[2] else None
    return _of_residual(g, norm.input[0], (norm,), "SkipLayerNormalization", weight, bias,
                        attribute(norm, "epsilon", 1e-5), g.skip_cast_forward(norm.output[0]))


def _of_residual(g: GraphIndex, x: str, readers: tuple, op_type: str, weight: str, bias: str | None,
                 epsilon: float, output: str) -> _Norm | None:
    """The norm of `x` (or of the tensor `x` is a cast of) as a `_Norm`, if that tensor is the sum of a residual
    add of two tensors of one shape [B, L, hidden] and the weights and output are in the sum's dtype."""
    total = g.skip_cast_back(x)
    add = g.made_by(total, "Add")
    if add is None:
        return None
    dtype, shape = g.types.get(total), g.shapes.get(total) or []
    hidden = shape[-1] if len(shape) == 3 else None
    same = all(g.shapes.get(name) == shape for name in add.input)
    # FP32 weights of an FP16 model are the exporter's folded casts of FP16 values: cast back without loss
    typed = g.types.get(output) == dtype and all(g.types.get(name) in (dtype, TensorProto.FLOAT)
                                                 for name in (weight, *([bias] if bias else [])))
    sized = all((g.shapes.get(name) or [None]) == [hidden] for name in (weight, *([bias] if bias else [])))
    if dtype not in _FLOATS or hidden is None or not (same and typed and sized):
        return None
    cast = g.made_by(x, "Cast")
    if cast is not None and any(id(r) not in {id(n) for n in readers} for r in g.consumers[x]):
        return None  # the FP32 copy of the sum is read elsewhere too
    pattern_readers = (cast,) if cast is not None else readers
    return _Norm(add=add, op_type=op_type, weight=weight, bias=bias, epsilon=float(epsilon), output=output,
                 readers=tuple(id(node) for node in pattern_readers))


def fuse_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each residual add that feeds a norm fused into it; and how many."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = GraphIndex(model)
    candidates = [_rms_norm(g, n) for n in model.graph.node if n.op_type == "Pow"]
    candidates += [_layer_norm(g, n) for n in model.graph.node if n.op_type == "LayerNormalization"]
    found, seen = [], set()
    for norm in candidates:
        if norm is not None and id(norm.add) not in seen:
            seen.add(id(norm.add))
            found.append(norm)
    if not found:
        return model, 0
    fused_at, replaced, casts = {}, set(), {}
    outputs = {o.name for o in model.graph.output}
    for norm in found:
        total = norm.add.output[0]
        # the sum is an output only where something other than this norm reads it (a pre-norm layer's next add)
        keeps_sum = any(id(r) not in norm.readers for r in g.consumers[total]) or total in outputs
        dtype = g.types[total]
        inputs = [norm.add.input[0], norm.add.input[1]] + [
            name if g.types[name] == dtype else _cast(casts, name, dtype)
            for name in (norm.weight, *([norm.bias] if norm.bias else []))]
        fused_at[id(norm.add)] = helper.make_node(
            norm.op_type, inputs, [norm.output, "", "", total if keeps_sum else ""],
            name=f"{norm.add.name or 'residual'}_{norm.op_type}", domain=MS_DOMAIN, epsilon=norm.epsilon)
        replaced.add(norm.output)
    nodes = list(casts.values())
    for node in model.graph.node:
        if id(node) in fused_at:
            nodes.append(fused_at[id(node)])
        elif not any(out in replaced for out in node.output):  # the norm's last node: the fused one makes it
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    sort_nodes(model.graph)  # the fused node sits where the add was; the norm's weight may be made later
    drop_unused(model.graph)  # (which keeps only what a later node reads: after the sort)
    use_ms_domain(model)
    return model, len(found)


def _cast(casts: dict, name: str, dtype: int) -> str:
    """`name` cast to `dtype`, once per graph (a norm weight shared by two fused nodes is cast once)."""
    if name not in casts:
        cast = f"{PREFIX}_{name}_as_{TensorProto.DataType.Name(dtype).lower()}"
        casts[name] = helper.make_node("Cast", [name], [cast], name=cast, to=dtype)
    return casts[name].output[0]

