"""`ce-run` ends without the interpreter's teardown after a finished run, and only then.

The teardown (atexit hooks, the CUDA runtime's and ONNX Runtime's destructors) is skipped after the results are
written and stdout flushed; CETRT_QUICK_EXIT=0 keeps it; a failed run exits through `sys.exit` with its code; a
bad switch value is refused before the run. An atexit hook registered before `run_main` shows which way the
process ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HOOKED = ("import atexit, sys; atexit.register(lambda: print('teardown ran', flush=True)); "
          "from cetrt.cli import run_main; sys.argv[0] = 'ce-run'; run_main()")


def _ce_run(args, **env):
    return subprocess.run([sys.executable, "-c", HOOKED, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


@pytest.mark.parametrize("setting, teardown", [(None, False), ("0", True)])
def test_a_finished_run_ends_at_once_with_its_results_written(zoo, hellaswag_path, tmp_path, setting, teardown):
    results = tmp_path / "results.json"
    env = {"CETRT_QUICK_EXIT": setting} if setting is not None else {}
    done = _ce_run(["--engines", zoo.engines("llama"), "--dataset", hellaswag_path, "--limit", "8", "--json",
                    results, "--quiet"], **env)
    assert done.returncode == 0, done.stderr
    assert "acc_norm" in done.stdout and f"results    {results}" in done.stdout  # the last lines, flushed
    assert ("teardown ran" in done.stdout) is teardown
    assert json.loads(results.read_text())["n"] == 8
    assert not list(tmp_path.glob("*.journal*")) and not list(tmp_path.glob("*partial*"))


def test_a_failed_run_keeps_its_exit_code_and_the_teardown(tmp_path):
    done = _ce_run(["--engines", tmp_path / "nope", "--dataset", "x.jsonl"])
    assert done.returncode == 1 and "no such engines directory" in done.stderr
    assert "teardown ran" in done.stdout


def test_a_bad_switch_value_is_refused_before_the_run(tmp_path):
    done = _ce_run(["--engines", tmp_path / "nope", "--dataset", "x.jsonl"], CETRT_QUICK_EXIT="yes please")
    assert done.returncode == 1
    assert "CETRT_QUICK_EXIT" in done.stderr and "no such engines directory" not in done.stderr
    assert "Traceback" not in done.stderr
