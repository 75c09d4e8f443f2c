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
    """The reads begin before the preparation is done, and go on past the first block while it runs (the loader
    keeps the blocks it cannot load yet: `test_the_reader_runs_ahead_of_a_preparation_still_making_the_engine_types`)."""
    engines = zoo.engines("llama")
    assert read_manifest(engines).engine_types, "the default layout shares engine types: what preparing loads"
    blocks_read = []
    read = storage.read_verified

    def watched(engines_dir, block, *args):
        if not isinstance(block, EngineType):
            blocks_read.append(block.spec.index)
        return read(engines_dir, block, *args)

    prepare = loading.BlockLoader.prepare
    seen = {}

    def slow_prepare(self):
        with self._types_lock:  # as while ONNX Runtime CUDA makes a type's session: a loader would wait
            seen["read_first"] = _until(lambda: len(blocks_read) >= 2)
        prepare(self)

    monkeypatch.setattr(storage, "read_verified", watched)
    monkeypatch.setattr(loading.BlockLoader, "prepare", slow_prepare)
    results = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False))
    assert seen == {"read_first": True}
    streaming = results.extra["streaming"]
    assert len(results.items) == N_DOCS and streaming["loaded_beside_s"] > 0
    assert streaming["reader_slot_wait_s"] >= 0 and streaming["reader_buffer_s"] >= 0
    assert streaming["host_buffers"] is None  # plain memory on the CPU: no page-locked pool to count


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


@pytest.mark.parametrize("ahead_blocks", [0, 2, None])
def test_the_reader_runs_ahead_of_a_preparation_still_making_the_engine_types(zoo, ahead_blocks):
    """Loading a block waits for its engine type, which the preparation may still be making (1.5-2 s on ONNX
    Runtime CUDA). Until the types are ready the loader keeps the blocks it takes and frees their read slots, up
    to the plan's room (`ahead_bytes`), so the reader goes on; then it waits for the preparation (never racing it
    for the types) and loads every block in order. Without room (0) the reader stops after the first block, as
    before."""
    manifest = read_manifest(zoo.engines("llama"))
    sizes = [sum(f.bytes for f in b.files) for b in manifest.blocks]
    types_made, order = threading.Event(), []

    def load(block, source):
        source.read()
        types_made.wait(WAIT_S)  # the engine type: made by the preparation
        order.append(block.spec.index)
        return _Session(block)

    ahead = sum(sizes) if ahead_blocks is None else sum(sizes[:ahead_blocks])
    stats = ReadStats()
    store = ResidentStore(zoo.engines("llama"), manifest.blocks, 1, load, Timings(), stats, MemoryMeter(),
                          prepared=types_made.wait, ahead_bytes=ahead)
    try:
        # kept unloaded: ahead_blocks of them; then one more read, taken and waiting to load, holding the slot
        expected = sum(sizes) if ahead_blocks is None else sum(sizes[:ahead_blocks + 1])
        assert _until(lambda: stats.bytes_read >= expected)
        time.sleep(0.2)  # and no further
        assert stats.bytes_read == expected and order == []
        types_made.set()
        sessions = [store.get(block) for block in manifest.blocks]
        if ahead_blocks == 0:  # the reader was idle, waiting for the slot the loader held: recorded
            assert stats.slot_wait_s >= 0.15
        assert [s.block for s in sessions] == list(manifest.blocks)
        assert order == [b.spec.index for b in manifest.blocks]
        assert stats.bytes_read == sum(sizes)
    finally:
        types_made.set()
        store.close()
