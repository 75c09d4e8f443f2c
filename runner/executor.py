"""The layer-major executor: a chunk of batches goes through block i entirely before block i+1 runs.

Each engine is therefore needed once per chunk, not once per batch: the schedule that lets engines stream
from storage when the model does not fit (DESIGN.md). Activations of the chunk stay as the sessions return
them (host arrays on CPU, device buffers on GPU) between blocks; only the head's outputs come to the host.
Engines come from an `EngineStore`, which decides when bytes are read and what stays resident.
Usage: `outputs = run_layer_major(blocks, store, batches, chunk_tokens=1 << 16, progress=bar)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from cetrt.backends.base import Session
from cetrt.manifest import EngineBlock
from cetrt.runner.packing import Batch
from cetrt.spec import GREEDY, HIDDEN, HIDDEN_OUT, LOGPROBS


@dataclass
class Timings:
    load_s: float = 0.0  # reading engines and creating sessions
    compute_s: float = 0.0  # running blocks, including building the batch inputs
    bytes_read: int = 0


class ResidentStore:
    """Loads each engine on first use and keeps it: right when the whole model fits the memory budget."""

    def __init__(self, load: Callable[[EngineBlock], Session], timings: Timings):
        self._load = load
        self._timings = timings
        self._sessions: dict[int, Session] = {}

    def get(self, block: EngineBlock) -> Session:
        if block.spec.index not in self._sessions:
            start = time.perf_counter()
            self._sessions[block.spec.index] = self._load(block)
            self._timings.load_s += time.perf_counter() - start
            self._timings.bytes_read += sum(f.bytes for f in block.files)
        return self._sessions[block.spec.index]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


@dataclass
class HeadOutput:
    logprobs: np.ndarray  # [B, S] float32
    greedy: np.ndarray  # [B, S] bool


def chunks(batches: list[Batch], chunk_tokens: int) -> Iterator[list[int]]:
    """Consecutive batch indices whose padded tokens add up to at most `chunk_tokens` (at least one batch)."""
    current: list[int] = []
    total = 0
    for i, batch in enumerate(batches):
        size = batch.shape[0] * batch.shape[1]
        if current and total + size > chunk_tokens:
            yield current
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        yield current


def run_layer_major(blocks: tuple[EngineBlock, ...], store, batches: list[Batch], chunk_tokens: int,
                    timings: Timings, progress: Callable[[int], None] = lambda n: None) -> list[HeadOutput]:
    """Run every batch through every block, chunk by chunk; returns the head's outputs per batch."""
    results: list[HeadOutput | None] = [None] * len(batches)
    for chunk in chunks(batches, chunk_tokens):
        inputs = {i: batches[i].arrays() for i in chunk}
        hidden: dict[int, object] = {}
        for block in blocks:
            session = store.get(block)
            start = time.perf_counter()
            for i in chunk:
                feeds = {name: hidden[i] if name == HIDDEN else inputs[i][name] for name in block.spec.input_names}
                out = session.run(feeds)
                if block.spec.kind == "head":
                    results[i] = HeadOutput(session.to_host(out[LOGPROBS]), session.to_host(out[GREEDY]))
                    del hidden[i]
                else:
                    hidden[i] = out[HIDDEN_OUT]
                progress(1)
            timings.compute_s += time.perf_counter() - start
    return results  # type: ignore[return-value]
