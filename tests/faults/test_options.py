"""Option values are checked when the command line is parsed: one `error:` line, exit 1, before any work."""

from __future__ import annotations

import pytest
from helpers import fails_cleanly

from cetrt.cli import build_command, calib_command, export_command, predict_command, run_command
from cetrt.options import machine_memory


@pytest.mark.parametrize("option, value", [
    ("--tokens-per-batch", "0"), ("--chunk-tokens", "-1"), ("--threads", "-2"), ("--limit", "0"),
    ("--memory-budget", "lots"), ("--memory-budget", "0GiB"), ("--prefetch-depth", "9"), ("--length-multiple", "0"),
])
def test_run_options_out_of_range(tmp_path, option, value):
    """The engines directory does not even exist: the option is refused first, at parse time."""
    fails_cleanly(run_command, ["--engines", tmp_path / "nope", option, value], option)


def test_a_memory_budget_beyond_this_machine_is_refused_with_both_figures(tmp_path):
    total = machine_memory()
    assert total is not None, "this test reads /proc/meminfo"
    out = fails_cleanly(run_command, ["--engines", tmp_path / "nope", "--memory-budget", "1TiB"], "--memory-budget")
    assert "1024.00 GiB" in out.replace(",", "") and f"{total / 2**30:,.2f} GiB" in out


def test_a_memory_budget_for_a_target_is_not_bound_to_this_machine():
    """ce-predict's budget is the target's (an Orin with 28 GiB), not this machine's: checked for form only."""
    fails_cleanly(predict_command, ["--model", "llama-7b", "--memory-budget", "lots"], "--memory-budget")


@pytest.mark.parametrize("command, args", [
    (export_command, ["--out", "o", "--layers-per-block", "0"]),
    (calib_command, ["--onnx", "o", "--items", "-1"]),
    (build_command, ["--onnx", "o", "--out", "e", "--max-length", "0"]),
    (build_command, ["--onnx", "o", "--out", "e", "--tokens-per-batch", "-5"]),
])
def test_stage_options_out_of_range(command, args):
    fails_cleanly(command, args, args[-2])


@pytest.mark.parametrize("value", ["fast", "0", "-1"])
def test_a_bad_gil_hand_over_is_refused_before_any_work(tmp_path, monkeypatch, value):
    """CETRT_SWITCH_INTERVAL_MS (the readers' GIL hand-over, for A/B) takes positive milliseconds."""
    monkeypatch.setenv("CETRT_SWITCH_INTERVAL_MS", value)
    fails_cleanly(run_command, ["--engines", tmp_path / "nope"], "CETRT_SWITCH_INTERVAL_MS")
