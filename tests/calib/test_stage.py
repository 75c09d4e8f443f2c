"""The calibration stage end to end on a tiny model: calib.json written, carried by the build, used by ce-run,
and refused where it belongs to another model or another export."""

from __future__ import annotations

import json
import shutil

import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.calib.stage import CalibOptions, calibrate
from cetrt.errors import UserError
from cetrt.formats.calib import CALIB_FILE
from cetrt.runner.evaluate import RunOptions, evaluate


@pytest.fixture(scope="module")
def calibrated(zoo, hellaswag_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    onnx_dir = root / "onnx"
    shutil.copytree(zoo.onnx("llama", "float16"), onnx_dir)
    record = calibrate(CalibOptions(onnx_dir=onnx_dir, dataset=str(hellaswag_path), precision_items=4,
                                    schedule_items=60, progress=False))
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=root / "engines"))
    return onnx_dir, root / "engines", record


def test_calib_json_holds_measurements_and_a_schedule(calibrated):
    onnx_dir, engines, record = calibrated
    written = json.loads((onnx_dir / CALIB_FILE).read_text())
    assert written["model_hash"] == record.model_hash and written["precision"]["islands"] == []
    measured = written["measured"]
    assert measured["storage"]["bytes_per_s"] > 0 and measured["load_s_per_block"] > 0
    assert [c["tokens_per_batch"] for c in measured["compute"]] == [512, 1024, 2048, 4096]
    assert all(c["flop_per_s"] > 0 for c in measured["compute"])
    assert written["schedule"]["tokens_per_batch"] in (512, 1024, 2048, 4096)
    assert (engines / CALIB_FILE).read_bytes() == (onnx_dir / CALIB_FILE).read_bytes()


def test_the_run_uses_the_calibrated_schedule_and_says_so(calibrated, hellaswag_path):
    _, engines, record = calibrated
    said = []
    run = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=4, progress=False), announce=said.append)
    schedule = run.extra["streaming"]["schedule"]
    assert schedule["tokens_per_batch"] == record.schedule["tokens_per_batch"]
    assert schedule["source"].startswith("calib.json, measured on")
    assert any("calib.json" in line for line in said)
    given = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=4, progress=False,
                                tokens_per_batch=256))
    assert given.extra["streaming"]["schedule"]["source"].startswith("--tokens-per-batch as given")


def test_calib_json_of_another_model_is_refused(calibrated, zoo, hellaswag_path, tmp_path):
    onnx_dir, _, _ = calibrated
    engines = tmp_path / "opt-engines"
    shutil.copytree(zoo.engines("opt"), engines)
    shutil.copyfile(onnx_dir / CALIB_FILE, engines / CALIB_FILE)
    with pytest.raises(UserError, match="calibrated for another model"):
        evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=2, progress=False))


def test_calib_json_of_another_export_is_refused(calibrated, zoo, tmp_path):
    onnx_dir, _, _ = calibrated
    other = tmp_path / "fp32-export"
    shutil.copytree(zoo.onnx("llama", "float32"), other)
    shutil.copyfile(onnx_dir / CALIB_FILE, other / CALIB_FILE)
    with pytest.raises(UserError, match="another export of this model"):
        build_engines(BuildOptions(onnx_dir=other, out_dir=tmp_path / "engines"))


def test_a_device_this_machine_cannot_run_leaves_the_schedule_at_the_defaults(zoo, hellaswag_path, tmp_path,
                                                                             monkeypatch):
    import onnxruntime

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(zoo.onnx("llama"), onnx_dir)
    # an onnxruntime without the CUDA provider, as on CI, even where this machine has one
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *args, **kwargs: None, raising=False)
    record = calibrate(CalibOptions(onnx_dir=onnx_dir, target="cuda", dataset=str(hellaswag_path), precision_items=0,
                                    progress=False))
    monkeypatch.undo()
    assert "CUDAExecutionProvider" in record.measured["skipped"] and "tokens_per_batch" not in record.schedule
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=tmp_path / "engines"))
    run = evaluate(RunOptions(engines=tmp_path / "engines", dataset=str(hellaswag_path), limit=2, progress=False))
    assert run.extra["streaming"]["schedule"]["source"].startswith("defaults: calib.json measured nothing")
