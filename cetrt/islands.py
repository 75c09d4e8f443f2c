"""FP32 islands in an FP16 block graph, and the block's FP32 twin: pure ONNX graph transforms, no torch.

The precision check (cetrt.calib.precision) compares each FP16 block with `float32_twin(block)`: the same graph
with every FP16 tensor, initializer and cast made FP32. The twin computes in full precision on the
FP16-rounded weights, so it isolates the error of FP16 arithmetic (the weights are what they are).
Where FP16 arithmetic overflows or drifts, `with_fp32_islands(block, nodes)` makes the named nodes compute in
FP32 with explicit Casts at the island's edges: a strongly typed TensorRT network keeps them as written, and
the block's interface (inputs, outputs, their FP16 types) does not change. The island's node names are kept
in the model's metadata (`ISLANDS_KEY`), so a later check knows which islands a file already has.
Usage: `twin = float32_twin(model)`; `save_model(with_fp32_islands(model, {"node_12"}), path, external=False)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT16, FLOAT = TensorProto.FLOAT16, TensorProto.FLOAT
ISLANDS_KEY = "cetrt.fp32_islands"
_DTYPE_ATTRS = ("to", "dtype")  # Cast, EyeLike, Random*: attributes that name the output type
_FP32_SUFFIX = "/fp32"


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique, non-empty name, deterministically (`<op>_<index>`), in place; islands are
    named by node, so names must be stable between the file that was checked and the file that is rewritten."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _fp32_tensor(tensor: TensorProto) -> TensorProto:
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"initializer {tensor.name}: external data not loaded (load the model with its data)")
    out = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
    out.doc_string = tensor.doc_string
    return out


def _fp32_attributes(node: onnx.NodeProto) -> None:
    """A node whose attributes fix an FP16 result (Cast to FP16, an FP16 Constant, ConstantOfShape's FP16
    value) computes in FP32 instead."""
    for attr in node.attribute:
        if attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT16:
            attr.i = FLOAT
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT16:
            attr.t.CopyFrom(_fp32_tensor(attr.t))


def _set_fp32(value_info: onnx.ValueInfoProto) -> None:
    if value_info.type.tensor_type.elem_type == FLOAT16:
        value_info.type.tensor_type.elem_type = FLOAT


def float32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computed in FP32: FP16 initializers, constants, casts and I/O types become FP32.

    Its FP32 output is the reference for the FP16 block on the same inputs: FP16-rounded weights, full-precision
    arithmetic. Tensor and node names are unchanged, so every intermediate can be compared by name.
    """
    twin = _copy(model)
    graph = twin.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == FLOAT16:
            graph.initializer[i].CopyFrom(_fp32_tensor(init))
    for node in graph.node:
        _fp32_attributes(node)
    for value_info in (*graph.input, *graph.output, *graph.value_info):
        _set_fp32(value_info)
    return twin


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor: from the graph's records, shape inference for the rest."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    if all(o in types for node in graph.node for o in node.output if o):
        return types
    # infer on a copy whose initializers are inputs of the same type and shape: no weights, no 2 GB limit
    inputs = {v.name for v in graph.input}
    skeleton = onnx.helper.make_graph(
        list(graph.node), graph.name, list(graph.input) + [
            onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in graph.initializer
            if i.name not in inputs],
        list(graph.output), value_info=list(graph.value_info))
    inferred = onnx.shape_inference.infer_shapes(onnx.helper.make_model(skeleton, opset_imports=model.opset_import))
    for v in inferred.graph.value_info:
        types.setdefault(v.name, v.type.tensor_type.elem_type)
    return types


def islands_of(model: onnx.ModelProto) -> list[str]:
    """Node names already in FP32 islands, as the model's metadata records them."""
    for prop in model.metadata_props:
        if prop.key == ISLANDS_KEY:
            return list(json.loads(prop.value))
    return []


def _record_islands(model: onnx.ModelProto, names: set[str]) -> None:
    merged = sorted(set(islands_of(model)) | names)
    for prop in model.metadata_props:
        if prop.key == ISLANDS_KEY:
            prop.value = json.dumps(merged)
            return
    model.metadata_props.add(key=ISLANDS_KEY, value=json.dumps(merged))


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def with_fp32_islands(model: onnx.ModelProto, node_names: set[str]) -> onnx.ModelProto:
    """A copy of `model` in which the named nodes compute in FP32.

    FP16 inputs entering the island get a Cast to FP32 (an FP16 initializer used only by island nodes is
    converted instead); the island's FP16 results become FP32; a result used outside the island (or a graph
    output) is cast back to FP16 under its original name, so the rest of the graph and the interface are as
    before. Casts to FP16 inside the island cast to FP32 instead. The node names go to the metadata.
    """
    out = _copy(model)
    graph = out.graph
    names = set(node_names)
    missing = names - {n.name for n in graph.node}
    if missing:
        raise ValueError(f"no such nodes in the graph: {sorted(missing)[:5]}")
    types = tensor_types(out)
    island = [n for n in graph.node if n.name in names]
    produced = list(dict.fromkeys(o for n in island for o in n.output if o))  # ordered: the file is deterministic
    outside_uses = {i for n in graph.node if n.name not in names for i in n.input} | {o.name for o in graph.output}
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | {v.name for v in (*graph.input, *graph.initializer)}
    taken |= {n.name for n in graph.node}
    infos = {v.name: v for v in graph.value_info}

    def fp32_info(name: str, new_name: str) -> None:
        source = infos.get(name) or next((v for v in (*graph.input, *graph.output) if v.name == name), None)
        info = onnx.ValueInfoProto()
        if source is not None:
            info.CopyFrom(source)
        else:
            info.type.tensor_type.elem_type = FLOAT
        info.name = new_name
        info.type.tensor_type.elem_type = FLOAT
        graph.value_info.append(info)

    # FP16 tensors entering the island: initializers used by the island alone are converted in place
    initializers = {init.name: init for init in graph.initializer}
    upcast: dict[str, str] = {}
    downcast_candidates = set(produced)
    for name in dict.fromkeys(i for n in island for i in n.input if i):
        if name in downcast_candidates or types.get(name) != FLOAT16:
            continue
        if name in initializers and name not in outside_uses:
            initializers[name].CopyFrom(_fp32_tensor(initializers[name]))
            continue
        upcast[name] = _fresh(name + _FP32_SUFFIX, taken)
        fp32_info(name, upcast[name])

    # FP16 results of the island: FP32 now; those used outside are renamed and cast back under the old name
    downcast: dict[str, str] = {}
    for name in produced:
        if types.get(name) != FLOAT16:
            continue
        if name in outside_uses:
            downcast[name] = _fresh(name + _FP32_SUFFIX, taken)
            fp32_info(name, downcast[name])
        elif name in infos:
            _set_fp32(infos[name])

    nodes, emitted = [], set()
    for node in graph.node:
        if node.name not in names:
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            nodes.append(kept)
            continue
        for name in node.input:
            if name in upcast and name not in emitted:
                emitted.add(name)
                nodes.append(onnx.helper.make_node("Cast", [name], [upcast[name]], to=FLOAT,
                                                   name=_fresh(name + "/cast_fp32", taken)))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        _fp32_attributes(new)
        for k, name in enumerate(new.input):
            new.input[k] = upcast.get(name) or downcast.get(name) or name
        for k, name in enumerate(new.output):
            new.output[k] = downcast.get(name, name)
        nodes.append(new)
        for name in node.output:
            if name in downcast:
                nodes.append(onnx.helper.make_node("Cast", [downcast[name]], [name], to=FLOAT16,
                                                   name=_fresh(name + "/cast_fp16", taken)))
    del graph.node[:]
    graph.node.extend(nodes)
    _record_islands(out, names)
    return out


def save_model(model: onnx.ModelProto, path: Path, external: bool) -> list[Path]:
    """Write `path` (and `path.data` when `external`) as export_block does; return the files, the .onnx first.

    Written beside the target and renamed over it, so a failure leaves the old files whole.
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".islands-") as tmp:
        tmp_path = Path(tmp) / path.name
        onnx.save_model(model, str(tmp_path), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(tmp_path), full_check=False)
        external = external and (Path(tmp) / data.name).is_file()  # no tensor large enough: all inline
        if external:
            os.replace(Path(tmp) / data.name, data)
        else:
            data.unlink(missing_ok=True)
        os.replace(tmp_path, path)
    return [path, data] if external else [path]
