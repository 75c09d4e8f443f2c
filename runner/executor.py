"""The layer-major executor: a chunk of batches goes through block i entirely before block i+1 runs.

Each engine is therefore needed once per chunk, not once per batch: the schedule that lets engines stream
from storage when the model does not fit (DESIGN.md). Engines come from a store: `ResidentStore` loads each
once and keeps it; `StreamingStore` takes bytes a background `Prefetcher` read ahead, loads, and frees the
engine when the chunk is through it. Activations live in memory (as the sessions return them: host arrays
on CPU, device buffers on GPU) or, as a third tier, in memory-mapped files. A `MemoryMeter` counts the bytes
of engines and activations held, from the buffers' sizes, and keeps the peak.
Usage: `outputs = run_layer_major(blocks, store, batches, chunk_list, activations, timings, progress)`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cetrt.backends.base import EngineSource, Session
from cetrt.formats.manifest import EngineBlock
from cetrt.plan import engine_bytes
from cetrt.spec import GREEDY, HIDDEN, HIDDEN_OUT, LOGPROBS
from cetrt.storage import PrefetchClosed, Prefetcher, ReadPlan, ReadStats
from cetrt.workload.packing import Batch


@dataclass
class Timings:
    load_s: float = 0.0  # creating sessions from engine bytes, on the executor's path
    compute_s: float = 0.0  # running blocks, including building the batch inputs
    load_beside_s: float = 0.0  # creating sessions on a resident store's loader thread, beside the executor


class MemoryMeter:
    """Bytes of engines and activations the executor holds now, and the most it ever held."""

    def __init__(self):
        self.current = 0
        self.peak = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.current += n
            self.peak = max(self.peak, self.current)

    def sub(self, n: int) -> None:
        with self._lock:
            self.current -= n


class _SessionStore:
    """What both stores share: a session made from bytes already read, timed and counted as held."""

    def __init__(self, engines_dir: Path, load: Callable[[EngineBlock, EngineSource], Session], timings: Timings,
                 meter: MemoryMeter):
        self._engines_dir, self._load, self._timings, self._meter = engines_dir, load, timings, meter
        self._sessions: dict[int, Session] = {}

    def _open(self, block: EngineBlock, data: bytes, beside: bool = False) -> Session:
        start = time.perf_counter()
        source = EngineSource(path=self._engines_dir / block.files[0].path, read=lambda: data)
        session = self._sessions[block.spec.index] = self._load(block, source)
        seconds = time.perf_counter() - start
        if beside:
            self._timings.load_beside_s += seconds
        else:
            self._timings.load_s += seconds
        self._meter.add(engine_bytes(block))
        return session

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


class ResidentStore(_SessionStore):
    """Loads every engine once and keeps it: right when the whole model fits the memory budget.

    A loader thread opens each block as soon as its bytes are read, which frees the reader's slot at once, so
    the one pass over storage runs at the reader's rate from the moment the store is made: beside the engine
    types' preparation, and beside blocks whose compute is slower than their read (a batch shape's first run on
    ONNX Runtime CUDA took 80 ms). With the read slots freed only by the executor (before 2026-12-04), the 7B
    resident run waited 2.9 s on storage for 7.2 s of reads beside 6.0 s of compute. The executor waits only for
    a block not yet loaded (counted as blocked on storage); `MemoryPlan.loads_as_read` is the planner's and
    ce-predict's word for this. `loads_as_read=False` is the executor's pace, as before (the benchmarks' baseline:
    CETRT_LOAD_AS_READ=0).

    Loading a block waits for its engine type, which the preparation makes beside tokenizing (1.5-2 s on ONNX
    Runtime CUDA, where tokenizing 2,000 items took 0.4 s). While `prepared(0)` says it is still running, the
    loader keeps the blocks it takes, unloaded, and frees their read slots at once, up to `ahead_bytes` (the
    plan's room); then it waits for the preparation (`prepared(None)`) rather than race it for the types, and
    loads them in order. Before 2026-12-04's second session the reader stopped after the first block until the
    preparation was done."""

    def __init__(self, engines_dir: Path, blocks: tuple[EngineBlock, ...], depth: int,
                 load: Callable[[EngineBlock, EngineSource], Session], timings: Timings, stats: ReadStats,
                 meter: MemoryMeter, plan: ReadPlan = ReadPlan(), buffers=None, loads_as_read: bool = True,
                 prepared: Callable[[float | None], bool] = lambda timeout: True, ahead_bytes: int = 0):
        super().__init__(engines_dir, load, timings, meter)
        self._stats = stats
        self._prepared, self._ahead_bytes = prepared, ahead_bytes
        self._loaded: dict[int, Future] = {block.spec.index: Future() for block in blocks}
        self._prefetcher = Prefetcher(engines_dir, list(blocks), depth, stats, plan=plan, buffers=buffers).__enter__()
        self._loader = None
        if loads_as_read:
            self._loader = threading.Thread(target=self._load_all, args=(list(blocks),), name="cetrt-load", daemon=True)
            self._loader.start()

    def _load_all(self, blocks: list[EngineBlock]) -> None:
        taken: list[tuple[EngineBlock, memoryview]] = []  # read, not loaded yet (while the preparation runs)
        try:
            for block in blocks:
                taken.append((block, self._prefetcher.take(block, waits_count=False)))
                if not self._prepared(0) and sum(engine_bytes(b) for b, _ in taken) <= self._ahead_bytes:
                    self._prefetcher.done()  # the reader goes on while the preparation makes the types
                    continue
                self._prepared(None)
                self._load_in_order(taken)
                self._prefetcher.done()
            self._prepared(None)
            self._load_in_order(taken)
        except PrefetchClosed:
            return
        except BaseException as error:  # the executor raises it when it needs this block or any after it
            for loaded in self._loaded.values():
                if not loaded.done():
                    loaded.set_exception(error)

    def _load_in_order(self, taken: list[tuple[EngineBlock, memoryview]]) -> None:
        """Load the blocks taken and not loaded yet, in order, and empty the list."""
        while taken:
            block, data = taken.pop(0)
            self._loaded[block.spec.index].set_result(self._open(block, data, beside=True))

    def get(self, block: EngineBlock) -> Session:
        loaded = self._loaded[block.spec.index]
        if not loaded.done() and self._loader is None:  # the executor's pace: the take counts its own wait
            loaded.set_result(self._open(block, self._prefetcher.take(block)))
            self._prefetcher.done()
        if not loaded.done():
            start = time.perf_counter()
            wait([loaded])
            self._stats.blocked_s += time.perf_counter() - start
        return loaded.result()

    def release(self, block: EngineBlock) -> None:
        """Resident engines stay until the run ends."""

    def close(self) -> None:
        self._prefetcher.__exit__(None, None, None)
        if self._loader is not None:
            self._loader.join()
        super().close()


class StreamingStore(_SessionStore):
    """Engines read ahead in `sequence` order, loaded when needed, freed when the chunk is through them."""

    def __init__(self, engines_dir: Path, sequence: list[EngineBlock], depth: int,
                 load: Callable[[EngineBlock, EngineSource], Session], timings: Timings, stats: ReadStats,
                 meter: MemoryMeter, plan: ReadPlan = ReadPlan(), buffers=None):
        super().__init__(engines_dir, load, timings, meter)
        self._prefetcher = Prefetcher(engines_dir, sequence, depth, stats, on_start=meter.add, plan=plan,
                                      buffers=buffers).__enter__()

    def get(self, block: EngineBlock) -> Session:
        session = self._open(block, self._prefetcher.take(block))
        self._meter.sub(engine_bytes(block))  # the read bytes go once the session holds the engine
        self._prefetcher.done()
        return session

    def release(self, block: EngineBlock) -> None:
        self._sessions.pop(block.spec.index).close()
        self._meter.sub(engine_bytes(block))

    def close(self) -> None:
        self._prefetcher.__exit__(None, None, None)
        super().close()


class MemoryActivations:
    """Hidden states between blocks, kept as the session returned them."""

    def __init__(self, meter: MemoryMeter, bytes_per_token: int):
        self._values: dict[int, object] = {}
        self._sizes: dict[int, int] = {}
        self._meter, self._per_token = meter, bytes_per_token

    def put(self, i: int, batch: Batch, value, session: Session) -> None:
        self.drop(i)
        self._values[i], self._sizes[i] = value, batch.shape[0] * batch.shape[1] * self._per_token
        self._meter.add(self._sizes[i])

    def get(self, i: int):
        return self._values[i]

    def drop(self, i: int) -> None:
        if i in self._values:
            del self._values[i]
            self._meter.sub(self._sizes.pop(i))

    def close(self) -> None:
        for i in list(self._values):
            self.drop(i)


class DiskActivations:
    """The third tier: hidden states in memory-mapped .npy files; only the batch in flight is in memory."""

    def __init__(self, meter: MemoryMeter, directory: Path | None = None):
        self._dir = Path(tempfile.mkdtemp(prefix="cetrt-activations-", dir=directory))
        self._meter = meter

    def put(self, i: int, batch: Batch, value, session: Session) -> None:
        array = session.to_host(value)
        self._meter.add(array.nbytes)
        out = np.lib.format.open_memmap(self._dir / f"{i}.npy", mode="w+", dtype=array.dtype, shape=array.shape)
        out[:] = array
        out.flush()
        del out
        self._meter.sub(array.nbytes)

    def get(self, i: int):
        return np.load(self._dir / f"{i}.npy", mmap_mode="r")

    def drop(self, i: int) -> None:
        (self._dir / f"{i}.npy").unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class HeadOutput:
    logprobs: np.ndarray  # [B, S] float32
    greedy: np.ndarray  # [B, S] bool


def batch_inputs(session: Session, block: EngineBlock, batch: Batch, cache: dict, i: int, keep: bool) -> dict:
    """Batch i's inputs that `block` takes (ids, positions, mask, scored slots), on the session's device. With
    `keep`, the host arrays are built once and each input uploaded once per chunk, by the first block that takes
    it, then reused by every later block (another engine's session may hold a different set of inputs)."""
    entry = cache.get(i) or {"host": batch.arrays(), "device": {}}
    if keep:
        cache[i] = entry
    device = entry["device"]
    for name in block.spec.input_names:
        if name != HIDDEN and name not in device:
            device[name] = session.upload(name, entry["host"][name])
    return device


def run_layer_major(blocks: tuple[EngineBlock, ...], store, batches: list[Batch], chunk_list: list[list[int]],
                    activations, timings: Timings, results: list, progress: Callable[[int], None] = lambda n: None,
                    on_chunk_done: Callable[[list[int]], None] = lambda chunk: None, cache_inputs: bool = True) -> None:
    """Run every batch through every block, chunk by chunk, filling `results[i]` with batch i's head output.

    The caller owns `results`, so the chunks that finished before a failure keep their outputs.
    `cache_inputs` keeps each batch's ids, positions and mask for the whole chunk, uploaded once (on a GPU: in
    device memory), instead of rebuilding and uploading them for every block (the planner counts them as
    activations); off when activations spill to disk. The head's outputs are brought to the host after the
    whole chunk went through the head, so the host never waits for the device inside a block.
    """
    for chunk in chunk_list:
        cache: dict[int, dict] = {}
        for block in blocks:
            session = store.get(block)
            start = time.perf_counter()
            heads = {}
            for i in chunk:
                inputs = batch_inputs(session, block, batches[i], cache, i, cache_inputs)
                feeds = {name: activations.get(i) if name == HIDDEN else inputs[name] for name in block.spec.input_names}
                out = session.run(feeds)
                if block.spec.kind == "head":
                    heads[i] = out
                    activations.drop(i)
                else:
                    activations.put(i, batches[i], out[HIDDEN_OUT], session)
                progress(1)
            for i, out in heads.items():
                results[i] = HeadOutput(session.to_host(out[LOGPROBS]), session.to_host(out[GREEDY]))
            timings.compute_s += time.perf_counter() - start
            store.release(block)
        on_chunk_done(chunk)
