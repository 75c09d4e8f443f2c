"""The precision check: ordinary FP16 exports need no island; an FP16 overflow is found, kept in FP32, and fixed.

Islands are plain ONNX transforms, checked for validity and for leaving an ordinary block's output as it was
(up to FP16 noise). The overflow model is a tiny LLaMA whose V projection overflows FP16 but which is the same
function in exact arithmetic (tests/tiny_models.py `make_overflow_model`).
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cetrt.build.engines import BuildOptions, build_engines, with_islands
from cetrt.calib.precision import DEFAULT_THRESHOLD, FP16_MAX, check_precision
from cetrt.errors import UserError
from cetrt.export.pipeline import ExportOptions, export_model
from cetrt.files import FileRecord
from cetrt.formats.blocks import read_blocks, write_blocks
from cetrt.formats.calib import CALIB_FILE, CalibRecord, write_calib
from cetrt.formats.manifest import read_manifest
from cetrt.islands import ISLANDS_KEY, float32_twin, islands_of, save_model, with_fp32_islands
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import HIDDEN, POSITION_IDS, SEGMENT_IDS

from tiny_models import make_overflow_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_ordinary_fp16_export_needs_no_island(zoo, hellaswag_path, tmp_path, arch):
    export_dir = _copy(zoo.onnx(arch, "float16"), tmp_path / "onnx")
    before = (export_dir / "blocks.json").read_text()
    section = check_precision(export_dir, str(hellaswag_path), items=16, progress=False)
    assert section["islands"] == [] and section["items"] == 16 and section["threshold"] == DEFAULT_THRESHOLD
    assert [b["name"] for b in section["blocks"]] == [b.spec.name for b in read_blocks(export_dir).blocks]
    for block in section["blocks"]:
        assert not block["nonfinite"] and block["islands"] == [] and block["after"] is None
        assert 0 <= block["relative_error"] <= DEFAULT_THRESHOLD, block
        assert np.isfinite(block["max_abs_error"]) and np.isfinite(block["mean_abs_error"])
        assert 0 < block["max_fp16_magnitude"] < FP16_MAX
    assert any(b["max_abs_error"] > 0 for b in section["blocks"])  # FP16 really was compared with FP32
    assert (export_dir / "blocks.json").read_text() == before  # nothing rewritten


def _layer_feeds(hidden_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, l = 2, 9
    segments = np.zeros((b, l), dtype=np.int32)
    segments[:, 6:] = 1
    return {HIDDEN: rng.standard_normal((b, l, hidden_size)).astype(np.float16),
            POSITION_IDS: np.tile(np.arange(l), (b, 1)).astype(np.int64), SEGMENT_IDS: segments}


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.type for i in session.get_inputs()}
    typed = {k: v.astype(np.float32) if inputs[k] == "tensor(float)" and v.dtype == np.float16 else v for k, v in feeds.items()}
    return session.run(None, typed)[0].astype(np.float32)


def test_twin_and_islands_keep_the_graph_valid(zoo):
    export_dir = zoo.onnx("llama", "float16")
    block = read_blocks(export_dir).blocks[1]
    model = onnx.load(str(export_dir / block.onnx_file.path))
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)  # islands are named by node
    feeds = _layer_feeds(read_blocks(export_dir).model.hidden_size)
    plain = _run(model, feeds)

    twin = float32_twin(model)
    onnx.checker.check_model(twin, full_check=True)
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in twin.graph.initializer)
    reference = _run(twin, feeds)
    scale = np.abs(reference).max()
    assert np.abs(plain - reference).max() <= 1e-2 * scale

    last = model.graph.node[-1].name  # produces the graph output: cast back under its own name
    casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    for island in (matmuls, casts, {last}, matmuls | casts | {last}, set(names)):
        islanded = with_fp32_islands(model, island)
        onnx.checker.check_model(islanded, full_check=True)
        assert [o.name for o in islanded.graph.output] == [o.name for o in model.graph.output]
        assert islanded.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert set(islands_of(islanded)) == island
        out = _run(islanded, feeds)
        assert np.abs(out - plain).max() <= 1e-2 * scale, island
        assert np.abs(out - reference).max() <= np.abs(plain - reference).max() + 1e-3 * scale
    everything = _run(with_fp32_islands(model, set(names)), feeds)  # all FP32 inside: the twin, rounded once
    assert np.abs(everything - reference).max() <= 2.0**-10 * scale
    twice = with_fp32_islands(with_fp32_islands(model, matmuls), casts)
    assert set(islands_of(twice)) == matmuls | casts and any(p.key == ISLANDS_KEY for p in twice.metadata_props)
    with pytest.raises(ValueError, match="no such nodes"):
        with_fp32_islands(model, {"not-a-node"})


def test_save_model_writes_external_data_as_the_export_does(zoo, tmp_path):
    export_dir = zoo.onnx("llama", "float16")
    model = onnx.load(str(export_dir / read_blocks(export_dir).blocks[1].onnx_file.path))
    islanded = with_fp32_islands(model, {n.name for n in model.graph.node if n.op_type == "MatMul"})
    feeds = _layer_feeds(read_blocks(export_dir).model.hidden_size)
    expected = _run(islanded, feeds)
    path = tmp_path / "block_001.onnx"
    assert save_model(islanded, path, external=True) == [path, tmp_path / "block_001.onnx.data"]
    weights = [i for i in onnx.load(str(path), load_external_data=False).graph.initializer
               if i.data_location == onnx.TensorProto.EXTERNAL]
    assert weights and all(not i.raw_data for i in weights)
    assert np.array_equal(_run(onnx.load(str(path)), feeds), expected)
    assert save_model(onnx.load(str(path)), path, external=False) == [path]  # back inline: the .data goes
    assert not (tmp_path / "block_001.onnx.data").exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _scores(export_dir, out_dir, hellaswag_path) -> np.ndarray:
    build_engines(BuildOptions(onnx_dir=export_dir, out_dir=out_dir))
    results = evaluate(RunOptions(engines=out_dir, dataset=str(hellaswag_path), limit=8, progress=False))
    return np.array([item.scores for item in results.items])


def test_fp16_overflow_becomes_an_fp32_island_and_scores_match_fp32(tokenizer, hellaswag_path, tmp_path):
    model = make_overflow_model(tmp_path / "model", tokenizer)
    fp32, fp16 = tmp_path / "onnx32", tmp_path / "onnx16"
    for dtype, out in (("float32", fp32), ("float16", fp16)):
        export_model(ExportOptions(model=str(model), out_dir=out, dtype=dtype, layers_per_block=2))
    reference = _scores(fp32, tmp_path / "engines32", hellaswag_path)
    assert np.isfinite(reference).all()
    broken = _scores(fp16, tmp_path / "engines16", hellaswag_path)
    assert not np.isfinite(broken).all() or np.abs(broken - reference).max() > 1.0

    assert check_precision(fp32, str(hellaswag_path), progress=False)["blocks"] == []  # FP32: nothing to check
    section = check_precision(fp16, str(hellaswag_path), items=8, progress=False)
    layer = next(b for b in section["blocks"] if b["name"] == "layers[0:1]")
    assert layer["nonfinite"] or layer["relative_error"] > DEFAULT_THRESHOLD
    assert layer["after"]["relative_error"] <= DEFAULT_THRESHOLD and not layer["after"]["nonfinite"]
    [island] = section["islands"]
    assert island["block"] == "layers[0:1]" and "overflow" in island["reason"]
    assert island["ops"][0] == "MatMul" and island["nodes"][0] in island["reason"]  # the Q|K|V projection
    assert set(layer["islands"]) == set(island["nodes"])
    assert all(b["after"] is None for b in section["blocks"] if b["name"] != "layers[0:1]")

    export_files = {p.name: p.read_bytes() for p in fp16.iterdir() if p.is_file()}
    write_calib(fp16, _record(fp16, section))
    fixed = _scores(fp16, tmp_path / "engines16-fixed", hellaswag_path)  # the build applies calib.json's islands
    assert np.abs(fixed - reference).max() <= 1e-2
    manifest = read_manifest(tmp_path / "engines16-fixed")
    assert manifest.build_options["fp32_islands"] == {str(island["index"]): sorted(island["nodes"])}
    assert {p.name: p.read_bytes() for p in fp16.iterdir() if p.is_file() and p.name != CALIB_FILE} == export_files
    again = check_precision(fp16, str(hellaswag_path), items=8, progress=False)  # the export was not rewritten
    assert [i["nodes"] for i in again["islands"]] == [island["nodes"]]


def test_an_fp16_block_output_beyond_range_is_a_user_error(zoo, hellaswag_path, tmp_path):
    """Islands cannot widen the FP16 interface: the message says to export in float32."""
    export_dir = _copy(zoo.onnx("llama", "float16"), tmp_path / "onnx")
    exported = read_blocks(export_dir)
    block = exported.blocks[1]
    path = export_dir / block.onnx_file.path
    model = onnx.load(str(path))
    for init in model.graph.initializer:  # every projection x 2^6: the residual stream leaves FP16's range
        if init.data_type == onnx.TensorProto.FLOAT16 and len(init.dims) == 2:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float16(64), init.name))
    onnx.save(model, str(path))
    files = (FileRecord.of(export_dir, path),)
    blocks = tuple(b if b is not block else type(b)(spec=b.spec, files=files) for b in exported.blocks)
    write_blocks(export_dir, type(exported)(**{**exported.__dict__, "blocks": blocks}))
    with pytest.raises(UserError, match=r"layers\[0:2\] outputs hidden_out up to .* export in float32"):
        check_precision(export_dir, str(hellaswag_path), items=4, progress=False)


def test_drift_beyond_a_strict_threshold_gets_islands_until_it_passes(zoo, hellaswag_path, tmp_path):
    """At 5e-4 ordinary FP16 rounding counts as drift: islands are added round by round (at worst the whole
    block in FP32 inside), the block passes after; the export stays as written, and the graph the build makes
    from it and calib.json carries exactly the islands the check chose."""
    export_dir = _copy(zoo.onnx("llama", "float16"), tmp_path / "onnx")
    section = check_precision(export_dir, str(hellaswag_path), items=4, threshold=5e-4, progress=False)
    assert section["islands"] and all("drift" in i["reason"] or "whole block" in i["reason"] for i in section["islands"])
    fixed = [b for b in section["blocks"] if b["after"] is not None]
    assert fixed and all(b["after"]["relative_error"] <= 5e-4 and b["islands"] for b in fixed)
    exported = read_blocks(export_dir)
    islands = _record(export_dir, section).islands()
    for block in exported.blocks:
        for record in block.files:
            record.check_digest(export_dir, None, "")
        assert islands_of(onnx.load(str(export_dir / block.onnx_file.path))) == []
        built = with_islands(export_dir, block, islands.get(block.spec.index, []), tmp_path)
        model = onnx.load(str(built))
        onnx.checker.check_model(model)
        assert set(islands_of(model)) == set(section["blocks"][block.spec.index]["islands"])


def _record(export_dir, section) -> CalibRecord:
    """calib.json for `section` as the calib stage writes it, nothing measured."""
    return CalibRecord.for_export(read_blocks(export_dir), "test", section,
                                  {"target": "cpu", "skipped": "not measured in this test"}, {})
