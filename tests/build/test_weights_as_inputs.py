"""Weights as inputs: one engine per block type, each block's weights in a file the runner binds to its inputs.

The layout must score exactly as the engines with weights inside do, store the same weights once, build one
engine for all decoder layer blocks, and survive TensorRT-RTX's parser and builder.
"""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.formats.weights import weights_from_bytes
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import DEFAULT_WEIGHTS
from cetrt.workload.shapes import ShapePlan

N_DOCS = 12


@pytest.fixture(scope="module")
def built(zoo, tmp_path_factory):
    """Both layouts of the tiny LLaMA and OPT: {(arch, layout): engines directory}."""
    out = {}
    for arch in ("llama", "opt"):
        for layout in ("inputs", "inside"):
            out[arch, layout] = tmp_path_factory.mktemp(f"{layout}-{arch}")
            build_engines(BuildOptions(onnx_dir=zoo.onnx(arch), out_dir=out[arch, layout], weights=layout))
    return out


def test_the_default_is_weights_as_inputs(zoo):
    assert read_manifest(zoo.engines("llama")).weights_layout == DEFAULT_WEIGHTS == "inputs"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_layer_blocks_share_one_engine_and_keep_their_own_weights(built, arch):
    typed, inside = read_manifest(built[arch, "inputs"]), read_manifest(built[arch, "inside"])
    assert typed.weights_layout == "inputs" and inside.weights_layout == "inside"
    layer_blocks = [b for b in typed.blocks if b.spec.kind == "layers"]
    depths = {b.spec.last_layer - b.spec.first_layer for b in layer_blocks}
    for depth in depths:  # blocks of as many decoder layers share one engine
        assert len({b.engine_type for b in layer_blocks if b.spec.last_layer - b.spec.first_layer == depth}) == 1
    assert len(typed.engine_types) == 2 + len(depths)  # embed, head, one per depth
    for block in typed.blocks:
        assert block.files[0].path.endswith(".weights")
        data = (built[arch, "inputs"] / block.files[0].path).read_bytes()
        arrays = weights_from_bytes(data, block.weights)
        assert all(np.isfinite(a).all() for a in arrays.values())
        assert all(entry.offset % 4096 == 0 for entry in block.weights)  # each tensor where O_DIRECT can read it
    # the same weights, stored once: no more than the engines with weights inside plus 4 KiB alignment per tensor
    tensors = sum(len(b.weights) for b in typed.blocks)
    assert 0.9 * inside.engine_bytes < typed.engine_bytes < inside.engine_bytes + 4096 * tensors


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_scores_match_the_engines_with_weights_inside(built, hellaswag_path, arch):
    def scores(engines):
        run = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False))
        return run, np.array([s for item in run.items for s in item.scores])

    _, inside = scores(built[arch, "inside"])
    resident, typed = scores(built[arch, "inputs"])
    np.testing.assert_allclose(typed, inside, atol=1e-4, rtol=0)
    assert resident.extra["streaming"]["bytes_read"] == read_manifest(built[arch, "inputs"]).engine_bytes
    # streaming this layout under budgets: tests/runner/test_streaming.py runs both layouts


def test_an_unknown_layout_is_refused(zoo, tmp_path):
    with pytest.raises(UserError, match="--weights 'outside'"):
        build_engines(BuildOptions(onnx_dir=zoo.onnx("llama"), out_dir=tmp_path, weights="outside"))


@pytest.mark.parametrize("arch", ["llama", "opt", "phi3", "qwen2"])
def test_tensorrt_rtx_builds_the_shared_engines(zoo, tmp_path, arch):
    manifest = build_engines(BuildOptions(onnx_dir=zoo.onnx(arch, "float16"), out_dir=tmp_path, weights="inputs",
                                          backend="tensorrt-rtx", target="orin-agx-32gb", check=True,
                                          shape_plan=ShapePlan(tokens_per_batch=1024, max_length=256)))
    assert {t.name for t in manifest.engine_types} == {b.engine_type for b in manifest.blocks}
    for engine_type in manifest.engine_types:
        assert engine_type.files[0].path.endswith(".engine") and engine_type.files[0].bytes > 10_000
        assert all(isinstance(d, int) for t in engine_type.weight_inputs for d in t.shape)
