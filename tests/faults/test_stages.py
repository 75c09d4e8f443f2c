"""Stages skip what is done and never trip on what an earlier command left: the README's commands in any order.

`make engines` twice does the work once; a killed build resumes; an export redone with another precision into
the same folder drops the old export's calib.json instead of leaving it to block the build (issue 14's
`CHECK=1` failure); and the documented commands run in sequence through the Makefile on a tiny model.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.calib.stage import CalibOptions, calibrate
from cetrt.export.pipeline import ExportOptions, export_model

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def _said(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


def _mtimes(directory: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_export_calib_and_build_twice_do_the_work_once(zoo, hellaswag_path, tmp_path):
    onnx_dir, engines = tmp_path / "onnx", tmp_path / "engines"
    shutil.copytree(zoo.onnx("llama"), onnx_dir)  # what a first export wrote
    said: list[str] = []
    export_model(ExportOptions(model=str(zoo.model("llama")), out_dir=onnx_dir, dtype="float32", layers_per_block=2),
                 announce=said.append)
    assert _said(said, "up to date")
    options = CalibOptions(onnx_dir=onnx_dir, dataset=str(hellaswag_path), precision_items=2, schedule_items=8,
                           progress=False)
    calibrate(options, announce=said.append)
    before = _mtimes(onnx_dir)
    said.clear()
    calibrate(options, announce=said.append)
    assert _said(said, "up to date") and _mtimes(onnx_dir) == before
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines), announce=said.append)
    before = _mtimes(engines)
    said.clear()
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines), announce=said.append)
    assert _said(said, "up to date") and _mtimes(engines) == before
    said.clear()
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines, weights="inside"), announce=said.append)
    assert _said(said, "weights was 'inputs', now 'inside'")  # a changed option is named, and rebuilt


def test_a_killed_build_resumes_with_the_engines_it_finished(zoo, tmp_path, monkeypatch):
    from cetrt.backends.onnxruntime import OnnxRuntimeBackend

    real, built = OnnxRuntimeBackend.build, []

    def build_then_die(self, onnx_path, engine_path, *args, **kwargs):
        if len(built) == 2:
            raise KeyboardInterrupt  # the build is killed while building its third engine
        built.append(engine_path.name)
        return real(self, onnx_path, engine_path, *args, **kwargs)

    monkeypatch.setattr(OnnxRuntimeBackend, "build", build_then_die)
    options = BuildOptions(onnx_dir=zoo.onnx("llama"), out_dir=tmp_path / "engines", weights="inside")
    with pytest.raises(KeyboardInterrupt):
        build_engines(options)
    assert not (tmp_path / "engines" / "manifest.json").exists()
    first = list(built)
    built.clear()
    monkeypatch.setattr(OnnxRuntimeBackend, "build", lambda self, *a, **k: (built.append(a[1].name), real(self, *a, **k))[1])
    said: list[str] = []
    manifest = build_engines(options, announce=said.append)
    assert not set(first) & set(built) and len(first) + len(built) == len(manifest.blocks)
    assert _said(said, "resuming") and _said(said, "2 engine(s) of the interrupted build reused")
    assert not (tmp_path / "engines" / "build-journal.json").exists()


def test_an_export_redone_in_the_same_folder_drops_the_old_calibration(zoo, tmp_path):
    """Issue 14: an FP16 export into the FP32 export's folder kept its calib.json, and the build refused it."""
    from cetrt.formats.blocks import read_blocks
    from cetrt.formats.calib import CalibRecord, write_calib

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(zoo.onnx("llama"), onnx_dir)
    exported = read_blocks(onnx_dir)
    write_calib(onnx_dir, CalibRecord.for_export(exported, "test", {"islands": []},
                                                 {"target": "cpu", "skipped": "test"}, {"note": "defaults"}))
    export_model(ExportOptions(model=str(zoo.model("llama")), out_dir=onnx_dir, dtype="float16", layers_per_block=2))
    assert not (onnx_dir / "calib.json").exists()
    manifest = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=tmp_path / "engines"))
    assert manifest.dtype == "float16"


def _make(cwd: Path, target: str, **variables) -> subprocess.CompletedProcess:
    args = ["make", "-f", str(ROOT / "Makefile"), "-o", str(VENV / ".setup"), target, f"VENV={VENV}"]
    args += [f"{k}={v}" for k, v in variables.items()]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_readme_commands_in_sequence(zoo, hellaswag_path, tmp_path):
    """`make run`, `make engines` again (nothing redone), the README's TensorRT-RTX check build, `make run` again."""
    pytest.importorskip("tensorrt_rtx", reason="the test extras install tensorrt-rtx (make setup-test)")
    common = {"MODEL": zoo.model("llama"), "LAYERS_PER_BLOCK": 2, "DATASET": hellaswag_path, "LIMIT": 8}
    first = _make(tmp_path, "run", **common)
    assert (tmp_path / "results.json").is_file()
    again = _make(tmp_path, "engines", **common)
    for stage in ("export", "calib", "build"):
        assert f"{stage}: " in again.stdout and "up to date" in again.stdout, again.stdout
    assert again.stdout.count("up to date") == 3, again.stdout
    rtx = _make(tmp_path, "engines", BACKEND="tensorrt-rtx", TARGET="orin-agx-32gb", CHECK=1, **common)
    assert "built" in rtx.stdout
    last = _make(tmp_path, "run", **common)
    assert last.stdout.count("up to date") == 3 and "acc_norm" in last.stdout
    assert first.stdout.split("acc_norm")[1].split("\n")[0] == last.stdout.split("acc_norm")[1].split("\n")[0]
