"""Interrupted runs resume: SIGINT, SIGTERM and SIGKILL of a real `ce-run` process, then the same command again.

Each finished chunk reaches the journal before the next starts; a signal stops the run at the next batch with
exit 130 or 143 and one line naming the journal; the rerun skips finished items and ends with the results of an
uninterrupted run, item for item. The test waits for chunks to reach the journal (no timing assumptions).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cetrt.errors import UserError
from cetrt.formats.results import ItemResult
from cetrt.runner.journal import RunJournal

BIN = Path(sys.executable).parent
LIMIT = 240
CHUNK_TOKENS = 256  # every batch its own chunk: many journal entries


def _command(engines, dataset, json_path, limit=LIMIT):
    return [str(BIN / "ce-run"), "--engines", str(engines), "--dataset", str(dataset), "--limit", str(limit),
            "--chunk-tokens", str(CHUNK_TOKENS), "--json", str(json_path), "--quiet"]


def _chunks_in(journal: Path) -> int:
    if not journal.exists():
        return 0
    return max(0, len([line for line in journal.read_bytes().split(b"\n") if line.strip()]) - 1)


def _batches_in(journal: Path) -> int:
    """Batches of the whole lines after the header (a chunk holds one or more batches)."""
    lines = [line for line in journal.read_bytes().split(b"\n")[1:] if line.strip()]
    count = 0
    for line in lines:
        try:
            count += len(json.loads(line)["batches"])
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    return count


def _interrupt_after(command, journal: Path, chunks: int, sig) -> subprocess.CompletedProcess:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while _chunks_in(journal) < chunks:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _items(path: Path) -> list[dict]:
    return json.loads(path.read_text())["items"]


@pytest.fixture(scope="module")
def uninterrupted(zoo, hellaswag_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "results.json"
    subprocess.run(_command(zoo.engines("llama"), hellaswag_path, path), check=True, capture_output=True, timeout=900)
    assert not (path.parent / "results.journal.jsonl").exists()  # removed once results.json is written
    return _items(path)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_the_next_batch_and_the_rerun_resumes_to_the_same_results(
        zoo, hellaswag_path, tmp_path, uninterrupted, sig, code):
    results = tmp_path / "results.json"
    journal = tmp_path / "results.journal.jsonl"
    command = _command(zoo.engines("llama"), hellaswag_path, results)
    stopped = _interrupt_after(command, journal, 2, sig)
    assert stopped.returncode == code, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(journal) in errors[0] and "resume" in errors[0], stopped.stderr
    assert "Traceback" not in stopped.stderr and "Aborted!" not in stopped.stderr
    assert not results.exists()
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    kept = _batches_in(journal)
    assert partial["complete"] is False and 0 < partial["n"] < LIMIT

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resume" in resumed.stdout and f"of {kept} batches" in resumed.stdout
    assert _items(results) == uninterrupted
    assert json.loads(results.read_text())["resumed"]["items"] == partial["n"]
    assert not journal.exists() and not (tmp_path / "results.partial.json").exists()


def test_after_sigkill_the_rerun_resumes_and_says_so(zoo, hellaswag_path, tmp_path, uninterrupted):
    results = tmp_path / "results.json"
    journal = tmp_path / "results.journal.jsonl"
    command = _command(zoo.engines("llama"), hellaswag_path, results)
    killed = _interrupt_after(command, journal, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    kept = _batches_in(journal)
    with open(journal, "ab") as f:  # a kill in the middle of a write leaves part of a line
        f.write(b'{"batches": [99], "items": [[[0, {"ind"')
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert f"of {kept} batches" in resumed.stdout
    assert _items(results) == uninterrupted


def test_a_journal_of_other_engines_or_another_dataset_is_refused(zoo, hellaswag_path, tmp_path):
    import shutil

    from helpers import fails_cleanly

    from cetrt.cli import run_command

    results = tmp_path / "results.json"
    journal = tmp_path / "results.journal.jsonl"
    stopped = _interrupt_after(_command(zoo.engines("llama"), hellaswag_path, results), journal, 1, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    other = tmp_path / "other.jsonl"
    shutil.copyfile(hellaswag_path, other)
    args = ["--engines", zoo.engines("llama"), "--limit", LIMIT, "--chunk-tokens", CHUNK_TOKENS, "--json", results]
    fails_cleanly(run_command, [*args, "--dataset", other], "another dataset path")
    rebuilt = tmp_path / "rebuilt"  # the same engines with a manifest.json that differs (as a rebuild's would)
    shutil.copytree(zoo.engines("llama"), rebuilt)
    (rebuilt / "manifest.json").write_text(json.dumps(json.loads((rebuilt / "manifest.json").read_text())))
    fails_cleanly(run_command, ["--engines", rebuilt, *args[2:], "--dataset", hellaswag_path], "other engines")
    fails_cleanly(run_command, [*args[:2], "--limit", LIMIT - 1, "--dataset", hellaswag_path, "--json", results],
                  "another --limit")
    assert journal.exists()  # refused, never overwritten


def test_the_journal_drops_a_cut_line_and_refuses_a_corrupt_one(tmp_path):
    key = {"manifest_sha256": "m", "dataset": "d", "limit": 1}
    path = tmp_path / "j.jsonl"
    journal = RunJournal.open(path, key)
    item = ItemResult(ind="x", label=1, scores=(-1.5, -2.25, -0.1, -9.0), lengths=(3.0, 4.0, 5.0, 6.0),
                      greedy=(False, True, False, False))
    journal.record([4], [{7: item}])
    with open(path, "ab") as f:
        f.write(b'{"batches": [5], "ite')
    again = RunJournal.open(path, key)
    assert again.finished == {4: {7: item}}
    assert path.read_bytes().endswith(b"\n")  # the cut line is gone, so the next entry starts a line
    again.record([5], [{8: item}])
    assert RunJournal.open(path, key).finished == {4: {7: item}, 5: {8: item}}
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match="corrupt"):
        RunJournal.open(path, key)
