"""The device and the engine types are made ready beside tokenizing (runner/loading.py `BlockLoader.prepare`):
the same scores as preparing them when first needed, the engine types really loaded before the executor, and
a bad engine type still refused by name; the first reads' host buffers asked for there too."""

from __future__ import annotations

import mmap
import shutil
import threading

import pytest

import cetrt.runner.evaluate as evaluate_module
from cetrt import storage
from cetrt.errors import UserError
from cetrt.formats.manifest import EngineType, read_manifest
from cetrt.runner.evaluate import RunOptions, evaluate

N_DOCS = 8


def _run(engines, hellaswag_path):
    return evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False))


def test_engine_types_load_on_another_thread_while_tokenizing_and_score_the_same(zoo, hellaswag_path, monkeypatch):
    engines = zoo.engines("llama")
    types = {t.name for t in read_manifest(engines).engine_types}
    assert types, "the default layout shares engine types: the case this preparation is for"
    loaded_on: dict[str, str] = {}
    original = storage.read_verified

    def watched(engines_dir, block, *args):  # an engine type is read once, by the thread that loads it
        if isinstance(block, EngineType):
            loaded_on[block.name] = threading.current_thread().name
        return original(engines_dir, block, *args)

    monkeypatch.setattr(storage, "read_verified", watched)
    beside = _run(engines, hellaswag_path)
    assert set(loaded_on) == types and all(n.startswith("cetrt-prepare") for n in loaded_on.values())
    assert beside.extra["phases"]["prepared_beside_tokenizing_s"] > 0

    loaded_on.clear()
    monkeypatch.setenv("CETRT_PREPARE_BESIDE", "0")
    serial = _run(engines, hellaswag_path)  # each type loaded with the first block that needs it (resident: the
    assert set(loaded_on) == types and not any(n.startswith("cetrt-prepare") for n in loaded_on.values())  # loader)
    assert serial.extra["phases"]["prepared_beside_tokenizing_s"] == 0
    assert [i.scores for i in beside.items] == [i.scores for i in serial.items]


def test_a_corrupt_engine_type_is_refused_by_name_from_the_preparing_thread(zoo, hellaswag_path, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(zoo.engines("llama"), engines)
    victim = engines / read_manifest(engines).engine_types[0].files[0].path
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(UserError, match=victim.name):
        _run(engines, hellaswag_path)


def test_preparing_is_skipped_when_asked(monkeypatch):
    monkeypatch.setenv("CETRT_PREPARE_BESIDE", "0")
    assert not evaluate_module.prepare_beside_tokenizing()
    monkeypatch.delenv("CETRT_PREPARE_BESIDE")
    assert evaluate_module.prepare_beside_tokenizing()


def test_the_first_reads_buffers_are_prepared_beside_tokenizing_and_each_next_one_by_the_reader(
        zoo, hellaswag_path, monkeypatch):
    """On a GPU the reader's buffers are page-locked memory, slow to make: the preparation asks for the first two
    reads' buffers while tokenizing runs, and the reader asks for each next read's before its own. Here plain
    buffers stand in for the page-locked ones (the CPU backend has none), and the scores must not change."""
    from cetrt.backends.onnxruntime import OnnxRuntimeBackend
    from cetrt.storage import HostBuffers, buffer_sizes

    engines = zoo.engines("llama")
    blocks = read_manifest(engines).blocks
    asked: list[tuple[str, list[int]]] = []
    taken: list[int] = []

    def take(nbytes: int):
        taken.append(nbytes)
        return memoryview(mmap.mmap(-1, nbytes))

    buffers = HostBuffers(take, lambda sizes: asked.append((threading.current_thread().name, list(sizes))))
    monkeypatch.setattr(OnnxRuntimeBackend, "host_buffers", lambda self, target: buffers)
    given = _run(engines, hellaswag_path)
    assert [sizes for thread, sizes in asked if thread.startswith("cetrt-prepare")] == [buffer_sizes(blocks[:2])]
    by_reader = [sizes for thread, sizes in asked if not thread.startswith("cetrt-prepare")]
    assert by_reader == [buffer_sizes(blocks[i:i + 2]) for i in range(len(blocks))]
    assert taken == buffer_sizes(blocks)  # every block read into the buffers given, once (resident)
    monkeypatch.undo()
    assert [i.scores for i in given.items] == [i.scores for i in _run(engines, hellaswag_path).items]
