"""A spilled run, watched while it runs: activations really on disk, the memory meter never below what is held.

The run asks for the third tier (`ce-run --spill`: hidden states on disk, engines streamed) for the tiny LLaMA's
engines. Every block run is observed through a wrapped session: the spill folder's files (all of the chunk's
hidden states must be there between blocks, as files of their full size), the hidden state fed (a memory map of
such a file), and the executor's memory meter against the bytes independently known to be held at that moment:
the engine of every block whose session is open, and the engine types those blocks run on.
"""

from __future__ import annotations

import numpy as np
import pytest

import cetrt.runner.loading as loading
from cetrt.backends.base import Session
from cetrt.formats.manifest import read_manifest
from cetrt.plan import engine_bytes
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import HIDDEN

N_DOCS = 12
TOKENS_PER_BATCH = 256


class Watched(Session):
    def __init__(self, inner: Session, on_run, on_close):
        self._inner, self._on_run, self._on_close = inner, on_run, on_close

    def run(self, feeds):
        self._on_run(feeds)
        return self._inner.run(feeds)

    def to_host(self, value):
        return self._inner.to_host(value)

    def close(self):
        self._on_close()
        self._inner.close()


@pytest.fixture(scope="module")
def engines(zoo):
    return zoo.engines("llama")


def test_spilled_activations_are_files_on_disk_and_the_meter_counts_what_is_held(engines, hellaswag_path, tmp_path,
                                                                              monkeypatch):
    manifest = read_manifest(engines)
    budget = manifest.engine_bytes  # resident would fit: the third tier asked for (ce-run --spill)
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = {"files": [], "fed": [], "short": []}
    live: dict[int, object] = {}
    original = loading.BlockLoader.__call__

    def held_lower_bound() -> int:
        types = {b.engine_type for b in live.values() if b.engine_type}
        return (sum(engine_bytes(b) for b in live.values())
                + sum(f.bytes for name in types for f in manifest.engine_type(name).files))

    def watched_load(self, block, source):
        meter = self._meter
        live[block.spec.index] = block

        def on_run(feeds):
            files = {p.name: p.stat().st_size for p in spill.glob("*/*.npy")}
            seen["files"].append(files)
            if HIDDEN in feeds:
                seen["fed"].append(type(feeds[HIDDEN]))
            if meter.current < held_lower_bound():
                seen["short"].append((block.spec.name, meter.current, held_lower_bound()))

        return Watched(original(self, block, source), on_run, lambda: live.pop(block.spec.index, None))

    monkeypatch.setattr(loading.BlockLoader, "__call__", watched_load)
    spilled = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False,
                                  tokens_per_batch=TOKENS_PER_BATCH, memory_budget=str(budget), spill_dir=spill,
                                  spill=True))
    monkeypatch.undo()
    resident = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False,
                                   tokens_per_batch=TOKENS_PER_BATCH))

    info = spilled.extra["streaming"]
    assert info["plan"]["activations"] == "disk" and not info["plan"]["resident"]
    n_batches = len(spilled.batch_shapes)
    assert n_batches >= 2
    hidden_bytes = manifest.model.hidden_size * 4  # FP32 engines
    full = {f"{i}.npy" for i in range(n_batches)}
    assert any(set(files) == full for files in seen["files"])  # every batch's hidden state on disk at once
    for name, size in max(seen["files"], key=len).items():  # each file holds its batch's [B, L, H] in full
        b, length = spilled.batch_shapes[int(name.removesuffix(".npy"))]
        assert size >= b * length * hidden_bytes
    assert seen["fed"] and all(issubclass(kind, np.memmap) for kind in seen["fed"])
    assert list(spill.rglob("*")) == []  # nothing left behind
    assert seen["short"] == []
    assert info["peak_held_bytes"] >= max(engine_bytes(b) for b in manifest.blocks)
    assert [i.scores for i in spilled.items] == [i.scores for i in resident.items]
