"""The committed GPU results are what bench/gpu_combine.py makes from the committed step files, and the harness's
end-to-end figure stops at its first scoring round (it ran on through the resident round until 2026-12-06).

The step files come back from the device machine as they were written; a change to the combining code that moves a
published figure (or a hand edit of a result file) fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_combine import harness_scored_once_s  # noqa: E402  (bench/ is scripts, not a package)


def test_the_harness_is_counted_until_it_has_scored_once():
    rounds = [{"seconds": 12.0}]
    assert harness_scored_once_s({"scored_once_s": 30.5, "end_to_end_s": 45.0, "resident_rounds": rounds}) == 30.5
    assert harness_scored_once_s({"end_to_end_s": 45.0, "resident_rounds": rounds}) == 33.0  # step files before it
    assert harness_scored_once_s({"end_to_end_s": 45.0, "resident_rounds": []}) == 45.0  # --rounds 1: nothing after


@pytest.mark.parametrize("which, made", [("7b", "gpu_end_to_end_7b.json"),
                                         ("7b-whole", "gpu_end_to_end_7b_all_items.json")])
def test_the_committed_end_to_end_results_are_what_the_step_files_make(which, made, tmp_path, hellaswag_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_combine.py"), which, "--results", str(tmp_path),
                           "--dataset", str(hellaswag_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    committed = json.loads((ROOT / "bench" / "results" / made).read_text())
    assert json.loads((tmp_path / made).read_text()) == committed
    hf = committed["hf"]  # the method scored once: less than the process that went on to score again, resident
    assert committed["hf_end_to_end_s"] == hf["scored_once_s"] < hf["with_the_resident_round_s"]
