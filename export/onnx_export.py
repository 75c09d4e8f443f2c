"""Export one block module to an ONNX file with dynamic batch and length, standard ops only.

Uses torch.onnx's exporter (torch.export based) at opset 17, which TensorRT 10.3 (JetPack 6) parses; the
exporter's own graph optimizer folds constants and drops identity ops. Weights move to `<file>.data` when
the block is larger than `external_data_bytes` (protobuf cannot hold more than 2 GB).
Usage: `paths = export_block(module, examples, block_spec, path)`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnx import version_converter

from cetrt.spec import BlockSpec

OPSET = 17  # TensorRT 10.3 (JetPack 6) parses it; the exporter works at 18 and we convert down
_EXPORTER_OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30


def _dynamic_shapes(spec: BlockSpec) -> dict:
    dims = {name: torch.export.Dim(name, min=1, max=1 << 16) for name in ("B", "L", "S")}
    return {t.name: {axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs}


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and version-conversion notes on stdout; keep our progress bar readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def export_block(
    module: torch.nn.Module,
    examples: dict[str, torch.Tensor],
    spec: BlockSpec,
    path: Path,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> list[Path]:
    """Write `path` (and `path.data` if external); return the files written, the .onnx first."""
    return save_block(trace_block(module, examples, spec), path, needs_external_data(module, external_data_bytes))


def needs_external_data(module: torch.nn.Module, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> bool:
    """Whether the block's weights go to `<file>.data` (protobuf holds at most 2 GB)."""
    return parameter_bytes(module) > external_data_bytes


def trace_block(module: torch.nn.Module, examples: dict[str, torch.Tensor], spec: BlockSpec) -> onnx.ModelProto:
    """The block's ONNX model at opset 17, in memory (the exporter's seconds are here)."""
    args = tuple(examples[name] for name in spec.input_names)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            module,
            args,
            None,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=_EXPORTER_OPSET,
            dynamo=True,
            dynamic_shapes=tuple(_dynamic_shapes(spec)[name] for name in spec.input_names),
            verbose=False,
        )
        model = _drop_stale_attributes(version_converter.convert_version(program.model_proto, OPSET))
    if {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} != {OPSET}:
        raise RuntimeError(f"{spec.name}: the ONNX graph is not at opset {OPSET} after conversion")
    return model


def save_block(model: onnx.ModelProto, path: Path, external: bool) -> list[Path]:
    """Write `path` (and `path.data` if `external`), checked; return the files written, the .onnx first."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)  # small constants stay inline for shape inference
    onnx.checker.check_model(str(path), full_check=False)
    return [path, data] if external else [path]


def _drop_stale_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's 18 -> 17 adapter for the Reduce ops moves `axes` back to an attribute but leaves
    `noop_with_empty_axes`, which opset 17 does not define; with axes given it is the default 0 and can go."""
    for node in model.graph.node:
        if node.op_type.startswith("Reduce"):
            for attr in list(node.attribute):
                if attr.name == "noop_with_empty_axes":
                    if onnx.helper.get_attribute_value(attr) != 0:
                        raise RuntimeError(f"{node.name}: noop_with_empty_axes=1 has no opset 17 equivalent")
                    node.attribute.remove(attr)
    return model
