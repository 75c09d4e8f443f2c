"""Outputs checked before the work, written atomically, and kept when writing fails anyway.

A read-only place and a full disk are simulated by patching the writer (tests run as root, where permissions
do not stop a write, and on a disk that is not full); the code paths are those a real EROFS or ENOSPC takes.
"""

from __future__ import annotations

import errno
import json

import pytest
from helpers import fails_cleanly

from cetrt import outputs
from cetrt.cli import build_command, export_command, predict_command, run_command


def _run_args(zoo, hellaswag_path, json_path, limit=6):
    return ["--engines", zoo.engines("llama"), "--dataset", hellaswag_path, "--limit", limit, "--json", json_path,
            "--quiet"]


@pytest.mark.parametrize("where, message", [
    ("missing/results.json", "does not exist"),
    ("a-directory", "names a directory"),
])
def test_a_results_path_that_cannot_be_written_stops_the_run_before_it_starts(zoo, hellaswag_path, tmp_path,
                                                                               monkeypatch, where, message):
    (tmp_path / "a-directory").mkdir()
    started = []
    import cetrt.runner.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: started.append(1))
    fails_cleanly(run_command, _run_args(zoo, hellaswag_path, tmp_path / where), message)
    assert not started  # refused before scoring


def test_a_read_only_place_is_refused_before_the_run(zoo, hellaswag_path, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    fails_cleanly(run_command, _run_args(zoo, hellaswag_path, tmp_path / "r.json"), "cannot write here")


def test_too_little_space_is_refused_before_the_run_with_the_bytes(zoo, hellaswag_path, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "free_bytes", lambda directory: 1000)
    out = fails_cleanly(run_command, _run_args(zoo, hellaswag_path, tmp_path / "r.json"), "needs about")
    assert "MiB but the disk has 0.0 MiB free" in out


def test_a_full_disk_at_the_end_keeps_the_results_in_a_fallback_file(zoo, hellaswag_path, tmp_path, monkeypatch):
    """The run finishes, the write fails (ENOSPC): the items go to a fallback file the error names."""
    target = tmp_path / "r.json"
    real = outputs.write_atomic

    def full_for_target(path, data):
        if path == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "write_atomic", full_for_target)
    monkeypatch.setattr(outputs, "fallback_path", lambda path: tmp_path / "fallback" / "r.json")
    (tmp_path / "fallback").mkdir()
    out = fails_cleanly(run_command, _run_args(zoo, hellaswag_path, target), "disk full")
    assert str(tmp_path / "fallback" / "r.json") in out
    saved = json.loads((tmp_path / "fallback" / "r.json").read_text())
    assert saved["n"] == 6 and len(saved["items"]) == 6
    assert (tmp_path / "r.journal.jsonl").exists()  # the journal is kept until results.json is written


def test_write_atomic_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"

    def fail_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", fail_replace)
    with pytest.raises(OSError):
        outputs.write_atomic(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_predict_json_into_a_missing_directory_is_one_line(tmp_path):
    fails_cleanly(predict_command, ["--model", "llama-7b", "--json", tmp_path / "nope" / "p.json"], "does not exist")


def test_a_full_disk_during_the_export_is_one_line_with_the_bytes(zoo, tmp_path, monkeypatch):
    import cetrt.export.pipeline as pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "save_block", full)
    out = fails_cleanly(export_command, ["--model", zoo.model("llama"), "--out", tmp_path / "onnx", "--dtype", "float32"],
                        "disk full")
    assert str(tmp_path / "onnx") in out and "MiB" in out


def test_too_little_space_for_the_export_is_refused_before_it_starts(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "free_bytes", lambda directory: 1000)
    fails_cleanly(export_command, ["--model", zoo.model("llama"), "--out", tmp_path / "onnx", "--dtype", "float32"],
                  "needs about")


def test_a_full_disk_during_the_build_is_one_line_with_the_bytes(zoo, tmp_path, monkeypatch):
    from cetrt.backends.onnxruntime import OnnxRuntimeBackend

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(OnnxRuntimeBackend, "build", full)
    out = fails_cleanly(build_command, ["--onnx", zoo.onnx("llama"), "--out", tmp_path / "engines"], "disk full")
    assert str(tmp_path / "engines") in out and "MiB" in out
    assert not (tmp_path / "engines" / "manifest.json").exists()


def test_a_backend_that_reports_a_full_disk_as_its_own_error_still_gets_the_disk_full_line(zoo, tmp_path, monkeypatch):
    """ONNX Runtime reports a save on a full disk as InvalidProtobuf (seen on a 2 MB tmpfs): the build checks the
    disk when a backend fails, and names it."""
    from cetrt.backends.onnxruntime import OnnxRuntimeBackend

    class InvalidProtobuf(Exception):
        pass

    def fails(*args, **kwargs):
        monkeypatch.setattr(outputs, "free_bytes", lambda directory: 0)  # the disk filled while building
        raise InvalidProtobuf("failed to save")

    monkeypatch.setattr(OnnxRuntimeBackend, "build", fails)
    out = fails_cleanly(build_command, ["--onnx", zoo.onnx("llama"), "--out", tmp_path / "engines"], "disk full")
    assert "InvalidProtobuf" in out and "0.0 MiB free" in out
