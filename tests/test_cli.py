"""The command lines end to end on a tiny model, and one clear message with exit 1 for each bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cetrt.cli import build_command, export_command, run_command

BIN = Path(sys.executable).parent


def test_export_build_run_through_the_console_scripts(zoo, hellaswag_path, tmp_path):
    onnx_dir, engines, results = tmp_path / "onnx", tmp_path / "engines", tmp_path / "results.json"
    model = str(zoo.model("opt"))
    subprocess.run([BIN / "ce-export", "--model", model, "--out", onnx_dir, "--dtype", "float32",
                    "--layers-per-block", "3"], check=True, capture_output=True)
    subprocess.run([BIN / "ce-build", "--onnx", onnx_dir, "--out", engines], check=True, capture_output=True)
    run = subprocess.run([BIN / "ce-run", "--engines", engines, "--dataset", hellaswag_path, "--limit", "20",
                          "--json", results], check=True, capture_output=True, text=True)
    assert "acc_norm" in run.stdout and "tokens/s" in run.stdout
    assert "scoring" in run.stderr  # the progress bar
    data = json.loads(results.read_text())
    for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n", "latency_s", "model", "backend", "target"):
        assert key in data, key
    assert data["n"] == 20 and data["backend"] == "onnxruntime" and data["target"] == "cpu" and data["model"] == model
    assert 0 <= data["acc"] <= 1 and data["latency_s"] > 0
    assert data["acc"] == sum(i["pred"] == i["label"] for i in data["items"]) / 20
    item = data["items"][0]
    assert set(item) >= {"ind", "label", "scores", "lengths", "pred", "pred_norm"}
    assert len(item["scores"]) == len(item["lengths"]) == 4


def _fails_cleanly(command, args, message):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback: a UserError turned into a message
    assert "error:" in result.output and message in result.output, result.output
    return result.output


@pytest.mark.parametrize("script, args, message", [
    ("ce-run", ["--engines", "{tmp}/nope", "--dataset", "x.jsonl"], "no such engines directory"),
    ("ce-predict", ["--model", "llama-31b"], "presets: llama-7b"),
    ("ce-build", ["--onnx", "{tmp}/nope", "--out", "{tmp}/e"], "no such export directory"),
])
def test_errors_go_to_stderr_alone(tmp_path, script, args, message):
    """The console scripts as a user runs them, stdout and stderr apart: one `error:` line on stderr, nothing
    on stdout, no traceback, exit code 1."""
    done = subprocess.run([BIN / script, *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_missing_model(tmp_path):
    _fails_cleanly(export_command, ["--model", tmp_path / "nope", "--out", tmp_path / "o"], "no such model")


def test_unsupported_model(tmp_path):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (model / "model.safetensors").write_bytes(b"")
    output = _fails_cleanly(export_command, ["--model", model, "--out", tmp_path / "o"], "model_type 'gpt2' is not supported")
    assert "Phi3ForCausalLM" in output and "Qwen2ForCausalLM" in output and len(output) < 400  # not transformers' list


def test_a_rope_the_export_does_not_implement_is_refused(zoo, tmp_path):
    """Phi-3's 128k variants scale RoPE by sequence length (longrope): one line, before any weight is read."""
    model = tmp_path / "phi3-128k"
    shutil.copytree(zoo.model("phi3"), model)
    config = json.loads((model / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rotary = int(head_dim * config.get("partial_rotary_factor", 1.0)) // 2
    config["rope_scaling"] = {"type": "longrope", "short_factor": [1.0] * rotary, "long_factor": [2.0] * rotary}
    config.pop("rope_parameters", None)
    (model / "config.json").write_text(json.dumps(config))
    _fails_cleanly(export_command, ["--model", model, "--out", tmp_path / "o"], "rope type 'longrope' is not implemented")


def test_missing_export_directory(tmp_path):
    _fails_cleanly(build_command, ["--onnx", tmp_path / "nope", "--out", tmp_path / "e"], "no such export directory")


def test_missing_engines_directory(tmp_path, hellaswag_path):
    _fails_cleanly(run_command, ["--engines", tmp_path / "nope", "--dataset", hellaswag_path], "no such engines directory")


def test_spill_with_several_devices_is_refused(tmp_path, hellaswag_path):
    _fails_cleanly(run_command, ["--engines", tmp_path / "nope", "--dataset", hellaswag_path, "--spill", "--devices", "2"],
                   "--spill with --devices > 1")


def test_missing_dataset(zoo, tmp_path):
    _fails_cleanly(run_command, ["--engines", zoo.engines("llama"), "--dataset", tmp_path / "nope.jsonl"], "no such dataset file")


@pytest.mark.parametrize("change, message", [("flip", "does not match manifest.json"), ("truncate", "the file changed")])
def test_engine_that_does_not_match_the_manifest(zoo, hellaswag_path, tmp_path, change, message):
    engines = tmp_path / "engines"
    shutil.copytree(zoo.engines("llama"), engines)
    target = next(engines.glob("block_001.*"))
    data = bytearray(target.read_bytes())
    if change == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-10]
    target.write_bytes(bytes(data))
    _fails_cleanly(run_command, ["--engines", engines, "--dataset", hellaswag_path, "--limit", "2"], message)


def test_help_needs_no_heavy_imports():
    """`ce-run --help` on a machine without torch or onnxruntime: the CLI module imports neither."""
    code = "import sys, cetrt.cli; bad = {'torch', 'onnxruntime', 'transformers'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
    assert subprocess.run([BIN / "ce-run", "--help"], capture_output=True).returncode == 0
