"""Blocks larger than the external-data threshold keep their weights in `<block>.onnx.data`, end to end."""

from __future__ import annotations

import onnx

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.export.pipeline import ExportOptions, export_model
from cetrt.formats.blocks import read_blocks
from cetrt.runner.evaluate import RunOptions, evaluate


def test_external_weights_export_build_and_score_like_inline_ones(zoo, hellaswag_path, tmp_path):
    onnx_dir = tmp_path / "onnx"
    export_model(ExportOptions(model=str(zoo.model("llama")), out_dir=onnx_dir, dtype="float32",
                               layers_per_block=2, external_data_bytes=0))
    exported = read_blocks(onnx_dir)
    for block in exported.blocks:
        assert [f.path for f in block.files] == [f"block_{block.spec.index:03d}.onnx", f"block_{block.spec.index:03d}.onnx.data"]
        graph = onnx.load(str(onnx_dir / block.onnx_file.path), load_external_data=False).graph
        weights = [init for init in graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
        assert weights and all(not init.raw_data for init in weights)
    inside = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=tmp_path / "inside", weights="inside"))
    assert all(len(b.files) == 2 for b in inside.blocks if b.spec.kind == "layers")  # ORT keeps them external
    inputs = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=tmp_path / "inputs", weights="inputs"))
    assert all(b.files[0].path.endswith(".weights") for b in inputs.blocks)  # the split read the external data
    inline = evaluate(RunOptions(engines=zoo.engines("llama"), dataset=str(hellaswag_path), limit=6, progress=False))
    for layout in ("inside", "inputs"):
        external = evaluate(RunOptions(engines=tmp_path / layout, dataset=str(hellaswag_path), limit=6, progress=False))
        for a, b in zip(external.items, inline.items):
            assert max(abs(x - y) for x, y in zip(a.scores, b.scores)) <= 1e-5
