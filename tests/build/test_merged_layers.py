"""Layers merged into one engine (cetrt.merging): fewer engine calls, the same scores.

The zoo's tiny exports have one layer a block here, so merging 2 of 3 layers leaves a last engine of one layer:
two layer engine types, both paths checked. Scores must match the unmerged engines to FP32 rounding, the
manifest must describe the merged blocks, and the build must refuse merging for engines with weights inside.
"""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.formats.calib import CALIB_FILE, CalibRecord, write_calib
from cetrt.formats.manifest import read_manifest
from cetrt.runner.evaluate import RunOptions, evaluate

N_DOCS = 10


def _scores(engines, hellaswag_path, **options) -> np.ndarray:
    run = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False, **options))
    return np.array([s for item in run.items for s in item.scores])


@pytest.fixture(scope="module")
def one_layer_blocks(zoo):
    return zoo.onnx("llama", layers_per_block=1)


@pytest.mark.parametrize("merged, names", [
    (2, ["embed", "layers[0:2]", "layers[2:3]", "head"]),
    (3, ["embed", "layers[0:3]", "head"]),
])
def test_merged_engines_score_as_one_layer_engines(one_layer_blocks, tmp_path, hellaswag_path, merged, names):
    plain = build_engines(BuildOptions(onnx_dir=one_layer_blocks, out_dir=tmp_path / "plain", layers_per_engine=1))
    assert [b.spec.name for b in plain.blocks] == ["embed", "layers[0:1]", "layers[1:2]", "layers[2:3]", "head"]
    built = build_engines(BuildOptions(onnx_dir=one_layer_blocks, out_dir=tmp_path / "merged", layers_per_engine=merged))
    assert [b.spec.name for b in built.blocks] == names
    assert [b.spec.index for b in built.blocks] == list(range(len(names)))
    assert built.build_options["layers_per_engine"] == merged
    layer_types = {b.engine_type for b in built.blocks if b.spec.kind == "layers"}
    assert len(layer_types) == len(names) - 2  # a shorter last engine is a type of its own
    # every layer's weights travel, once: the same bytes as the plain layout (up to 4 KiB alignment per tensor)
    tensors = sum(len(b.weights) for b in built.blocks)
    assert abs(built.engine_bytes - plain.engine_bytes) < 4096 * tensors
    expected = _scores(tmp_path / "plain", hellaswag_path)
    np.testing.assert_allclose(_scores(tmp_path / "merged", hellaswag_path), expected, atol=1e-5, rtol=0)
    if merged == 3:
        return  # one engine holds every layer: nothing to stream
    budget = str(read_manifest(tmp_path / "merged").engine_bytes - 1)  # streamed: not every engine fits
    np.testing.assert_allclose(_scores(tmp_path / "merged", hellaswag_path, memory_budget=budget, tokens_per_batch=256),
                               expected, atol=1e-5, rtol=0)


def test_the_build_takes_calibs_choice(one_layer_blocks, tmp_path_factory):
    onnx_dir = tmp_path_factory.mktemp("calib-choice")
    for path in one_layer_blocks.rglob("*"):  # a copy: calib.json is written beside blocks.json
        if path.is_file():
            (onnx_dir / path.relative_to(one_layer_blocks)).parent.mkdir(parents=True, exist_ok=True)
            (onnx_dir / path.relative_to(one_layer_blocks)).write_bytes(path.read_bytes())
    (onnx_dir / CALIB_FILE).unlink(missing_ok=True)
    from cetrt.formats.blocks import read_blocks

    record = CalibRecord.for_export(read_blocks(onnx_dir), "data", {"islands": []}, {},
                                    {"layers_per_engine": 3, "layers_per_engine_reason": "made up"},
                                    seconds={}, inputs={})
    write_calib(onnx_dir, record)
    out = tmp_path_factory.mktemp("calib-choice-engines")
    assert [b.spec.name for b in build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=out)).blocks] == [
        "embed", "layers[0:3]", "head"]
    given = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=out, layers_per_engine=1))  # an option wins
    assert len(given.blocks) == 5


def test_merging_needs_weights_as_inputs(one_layer_blocks, tmp_path):
    with pytest.raises(UserError, match="--layers-per-engine 2: merging layers needs --weights inputs"):
        build_engines(BuildOptions(onnx_dir=one_layer_blocks, out_dir=tmp_path, weights="inside", layers_per_engine=2))
