"""A resident run reads every engine at the reader's pace: each block is loaded as it arrives, on the store's
loader thread (runner/executor.py `ResidentStore`), and the first reads start before the engine types are ready
(runner/evaluate.py `Beside`). Before 2026-12-04 the executor freed each read slot, so a block slower to compute
than the next one's read, or the preparation still running, stopped the reader (the 7B run waited 2.9 s on
storage for 7.2 s of reads beside 6.0 s of compute)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from cetrt import storage
from cetrt.errors import UserError
from cetrt.formats.manifest import EngineType, read_manifest
from cetrt.runner import loading
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.runner.executor import MemoryMeter, ResidentStore, Timings
from cetrt.storage import ReadStats

N_DOCS = 8
WAIT_S = 20.0  # far longer than reading the tiny engines; a regression fails after this wait, not never


class _Session:
    def __init__(self, block):
        self.block = block
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _store(engines, loaded_on: dict):
    manifest = read_manifest(engines)

    def load(block, source):
        source.read()
        loaded_on[block.spec.index] = threading.current_thread().name
        return _Session(block)

    stats = ReadStats()
    store = ResidentStore(engines, manifest.blocks, 1, load, Timings(), stats, MemoryMeter())
    return manifest, store, stats


def _until(condition) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_every_block_is_read_and_loaded_before_the_executor_asks_for_the_first(zoo):
    loaded_on: dict[int, str] = {}
    manifest, store, stats = _store(zoo.engines("llama"), loaded_on)
    try:
        everything = _until(lambda: len(loaded_on) == len(manifest.blocks))
        assert everything, f"{len(loaded_on)} of {len(manifest.blocks)} blocks loaded with one read ahead"
        assert set(loaded_on.values()) == {"cetrt-load"}
        sessions = [store.get(block) for block in manifest.blocks]
        assert [s.block for s in sessions] == list(manifest.blocks)
        assert stats.blocked_s == 0.0  # nothing left to wait for: the loader's own waits are not counted
        assert stats.bytes_read == sum(f.bytes for b in manifest.blocks for f in b.files)
    finally:
        store.close()
    assert all(s.closed for s in sessions)


def test_a_block_changed_on_disk_is_refused_by_name_when_the_executor_needs_it(zoo, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(zoo.engines("llama"), engines)
    blocks = read_manifest(engines).blocks
    victim = engines / blocks[2].files[0].path
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    manifest, store, _ = _store(engines, {})
    try:
        assert store.get(blocks[0]).block == blocks[0] and store.get(blocks[1]).block == blocks[1]
        for later in blocks[2:]:
            with pytest.raises(UserError, match=victim.name):
                store.get(later)
    finally:
        store.close()


def test_the_first_reads_start_while_the_engine_types_are_made_ready(zoo, hellaswag_path, monkeypatch):
    engines = zoo.engines("llama")
    assert read_manifest(engines).engine_types, "the default layout shares engine types: what preparing loads"
    block_read = threading.Event()
    read = storage.read_verified

    def watched(engines_dir, block, *args):
        if not isinstance(block, EngineType):
            block_read.set()
        return read(engines_dir, block, *args)

    prepare = loading.BlockLoader.prepare
    seen = {}

    def slow_prepare(self):
        seen["read_first"] = block_read.wait(WAIT_S)
        prepare(self)

    monkeypatch.setattr(storage, "read_verified", watched)
    monkeypatch.setattr(loading.BlockLoader, "prepare", slow_prepare)
    results = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False))
    assert seen == {"read_first": True}
    assert len(results.items) == N_DOCS and results.extra["streaming"]["loaded_beside_s"] > 0


def test_the_old_pace_on_request_loads_on_the_executor_and_scores_the_same(zoo, hellaswag_path, monkeypatch):
    """CETRT_LOAD_AS_READ=0, the benchmark's baseline (bench/gpu_speed.py loadab): the preparation finishes before
    the first read and the executor loads each resident block when it reaches it."""
    engines = zoo.engines("llama")
    loaded_on: set[str] = set()
    load = ResidentStore._open

    def watched(self, block, data, beside=False):
        loaded_on.add(threading.current_thread().name)
        return load(self, block, data, beside)

    monkeypatch.setattr(ResidentStore, "_open", watched)
    options = RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False)
    as_read = evaluate(options)
    assert loaded_on == {"cetrt-load"}
    loaded_on.clear()
    monkeypatch.setenv("CETRT_LOAD_AS_READ", "0")
    paced = evaluate(options)
    assert loaded_on == {threading.main_thread().name}
    assert paced.extra["streaming"]["loaded_beside_s"] == 0 and paced.load_s > 0
    assert [i.scores for i in paced.items] == [i.scores for i in as_read.items]
