"""The README's targets table is bench/targets.py's output from the committed results, and the script judges right.

A result file that changes without the README (or the other way round) fails here; so does a target whose rule
says met where the figure misses it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import targets  # noqa: E402  (bench/ is scripts, not a package)


def test_readme_table_is_the_scripts_output():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "targets.py"), "--check", str(ROOT / "README.md")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_target_reads_its_file_and_a_changed_figure_changes_the_verdict(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(targets.RESULTS, results, ignore=shutil.ignore_patterns("gpu_steps", "*.md"))
    rows = targets.table(results).splitlines()[2:]
    assert len(rows) == len(targets.TARGETS)

    def row(text: str, results=results) -> str:
        found = [line for line in targets.table(results).splitlines() if text in line]
        assert len(found) == 1, (text, found)
        return found[0]

    assert row("| 16 | SmolLM2, all items, defaults").count("**no**") == 1
    engines = json.loads((results / "gpu_engines.json").read_text())
    engines["smollm2_cetrt_s"] = engines["smollm2_harness_s"] / 6.0  # exactly the target
    (results / "gpu_engines.json").write_text(json.dumps(engines))
    assert "| 6.00x" in row("| 16 | SmolLM2, all items, defaults") and "| yes |" in row("| 16 | SmolLM2, all items")
    # the whole set's floor counts the passes the run made (ten at 1/6), at the short probe's rate
    floor_row = "| 12 | end to end at most 1.15x max(the passes' reads"
    assert row(floor_row).endswith("| **no** | `gpu_end_to_end_7b_all_items.json` |")
    whole = json.loads((results / "gpu_end_to_end_7b_all_items.json").read_text())
    sixth, rate = whole["budgets"]["1/6"], whole["probe_read_gb_per_s"] * 1e9
    assert sixth["passes"] > 2
    sixth["end_to_end_s"] = 1.149 * max(sixth["bytes_read"] / rate, sixth["compute_s"])  # just within the target
    (results / "gpu_end_to_end_7b_all_items.json").write_text(json.dumps(whole))
    assert "/ 1.15x (passes" in row(floor_row)
    assert row(floor_row).endswith("| yes | `gpu_end_to_end_7b_all_items.json` |")
    llama = json.loads((results / "gpu_llama30b.json").read_text())
    llama["ratios"]["prediction_error_of_latency"]["1/3"] = -0.151
    (results / "gpu_llama30b.json").write_text(json.dumps(llama))
    assert targets.table(results).splitlines()[-1].endswith("| **no** | `gpu_llama30b.json` |")


def test_a_readme_without_the_markers_is_refused_by_name(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "targets.py"), "--check", str(readme)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "targets: made by bench/targets.py" in done.stderr
