"""The export's precision rule, read from the FP16 graphs: norm statistics and softmax run on FP32 tensors.

In an FP16 export the matrix products are FP16, while RMSNorm's statistics (Pow, ReduceMean, Sqrt,
Reciprocal or Div), LayerNorm (LayerNormalization) and the attention softmax (and the head's log-softmax)
must take FP32 inputs, cast back afterwards (DESIGN.md: computed in FP32 and cast back). Each node's input
element types come from `cetrt.islands.tensor_types`. LLaMA covers RMSNorm (Phi-3 and Qwen2 reuse its
modules), OPT LayerNorm.
"""

from __future__ import annotations

import onnx
import pytest

from cetrt.formats.blocks import read_blocks
from cetrt.islands import tensor_types

FP32_OPS = {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "LayerNormalization", "Softmax", "LogSoftmax"}
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.mark.parametrize("arch, norm_op", [("llama", "ReduceMean"), ("opt", "LayerNormalization")])
def test_norm_statistics_and_softmax_take_fp32_inputs_in_an_fp16_export(zoo, arch, norm_op):
    export_dir = zoo.onnx(arch, "float16")
    for block in read_blocks(export_dir).blocks:
        if block.spec.kind == "embed":
            continue
        model = onnx.load(str(export_dir / block.onnx_file.path))
        types = tensor_types(model)
        ops = [n.op_type for n in model.graph.node]
        layers = block.spec.last_layer - block.spec.first_layer if block.spec.kind == "layers" else 0
        assert ops.count(norm_op) == (2 * layers if block.spec.kind == "layers" else 1), (block.spec.name, ops)
        assert ops.count("Softmax") == layers and ops.count("LogSoftmax") == (block.spec.kind == "head")
        assert any(types.get(n.input[0]) == FLOAT16 for n in model.graph.node if n.op_type == "MatMul")
        for node in model.graph.node:
            if node.op_type in FP32_OPS:
                inputs = {name: types.get(name) for name in node.input if name}
                assert set(inputs.values()) == {FLOAT}, (block.spec.name, node.name, node.op_type, inputs)
