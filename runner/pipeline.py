"""The executor over N devices: one stage worker per device, the batches flowing stage to stage.

Each `Stage` owns a contiguous run of blocks, its store (resident or streaming, under its device's budget), its
activations and its meter. A worker thread per stage (ONNX Runtime and TensorRT release the GIL while they
compute) takes batch i's hidden state from the stage before through a bounded queue, runs it through its blocks
and hands it on; the last stage keeps the head's outputs. A resident stage runs each batch through all its
blocks at once, so the next device starts on it at once (a pipeline over the batches); a streaming stage runs
its chunk layer-major (each engine read once per chunk) and hands each batch on as its last block finishes it.
`results` and `on_chunk_done` behave as `run_layer_major`'s: the same list filled, the callback called per chunk
in order (on the calling thread), so `evaluate` can call either. A failure in one stage stops every stage;
the first error is raised once and the chunks finished before it stay in `results`.
On CPU the "devices" are the same CPU: the point there is the schedule and its correctness. `transfer(value, k)`
moves a hidden state onto device k (identity on CPU; on CUDA a device-to-device copy: written, untested).
Usage: `run_pipeline(stages, batches, chunk_list, results, progress, on_chunk_done, cache_inputs=True)`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from cetrt.formats.manifest import EngineBlock
from cetrt.runner.executor import HeadOutput, Timings, batch_inputs
from cetrt.spec import GREEDY, HIDDEN, HIDDEN_OUT, LOGPROBS
from cetrt.workload.packing import Batch

_POLL_S = 0.05
QUEUE_BATCHES = 2  # hidden states in flight between two stages (the planner counts two batches in flight)


class _Stopped(Exception):
    """Another stage failed: this one stops without an error of its own."""


@dataclass
class Stage:
    index: int
    blocks: tuple[EngineBlock, ...]
    store: object  # ResidentStore or StreamingStore over `blocks`
    activations: object  # MemoryActivations or DiskActivations
    resident: bool
    timings: Timings = field(default_factory=Timings)
    busy_s: float = 0.0  # wall time this stage's worker spent computing (compute_s without the load)


def identity_transfer(value, device: int):
    return value


class _Pipeline:
    def __init__(self, stages: list[Stage], batches: list[Batch], chunk_list: list[list[int]], results: list,
                 progress: Callable[[int], None], cache_inputs: bool, transfer):
        self.stages, self.batches, self.chunk_list, self.results = stages, batches, chunk_list, results
        self.progress, self.cache_inputs, self.transfer = progress, cache_inputs, transfer
        self.queues = [queue.Queue(maxsize=QUEUE_BATCHES) for _ in stages[1:]]
        self.done: queue.Queue = queue.Queue()  # chunk numbers the last stage finished, in order
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.put(item, timeout=_POLL_S)
            except queue.Full:
                continue

    def _get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _progress(self) -> None:
        with self.lock:
            self.progress(1)

    def worker(self, stage: Stage) -> None:
        try:
            for number, chunk in enumerate(self.chunk_list):
                if stage.resident:
                    self._chunk_batch_major(stage, chunk)
                else:
                    self._chunk_layer_major(stage, chunk)
                if stage.index == len(self.stages) - 1:
                    self.done.put(number)
        except _Stopped:
            pass
        except BaseException as error:  # the first failure stops every stage; the caller raises it
            with self.lock:
                self.errors.append(error)
            self.stop.set()

    def _inputs(self, session, block: EngineBlock, cache: dict, i: int) -> dict:
        return batch_inputs(session, block, self.batches[i], cache, i, self.cache_inputs)

    def _receive(self, stage: Stage, i: int):
        index, value = self._get(self.queues[stage.index - 1])
        assert index == i, f"pipeline order: stage {stage.index} got batch {index}, wanted {i}"
        return self.transfer(value, stage.index)

    def _run(self, stage: Stage, block: EngineBlock, session, cache: dict, i: int, hidden, heads: dict):
        """Batch i through one block; returns its hidden state out (None after the head)."""
        if self.stop.is_set():
            raise _Stopped
        inputs = self._inputs(session, block, cache, i)
        feeds = {name: hidden if name == HIDDEN else inputs[name] for name in block.spec.input_names}
        out = session.run(feeds)
        self._progress()
        if block.spec.kind == "head":
            heads[i] = out
            return None
        return out[HIDDEN_OUT]

    def _finish(self, stage: Stage, i: int, hidden) -> None:
        if stage.index < len(self.stages) - 1 and hidden is not None:
            self._put(self.queues[stage.index], (i, hidden))

    def _heads(self, session, heads: dict) -> None:
        for i, out in heads.items():
            self.results[i] = HeadOutput(session.to_host(out[LOGPROBS]), session.to_host(out[GREEDY]))

    def _chunk_batch_major(self, stage: Stage, chunk: list[int]) -> None:
        """Every engine resident: each batch through all the stage's blocks, then on to the next device."""
        sessions = [stage.store.get(block) for block in stage.blocks]
        heads: dict = {}
        for i in chunk:
            hidden = self._receive(stage, i) if stage.index > 0 else None
            start = time.perf_counter()
            cache: dict = {}
            for block, session in zip(stage.blocks, sessions):
                hidden = self._run(stage, block, session, cache, i, hidden, heads)
            stage.timings.compute_s += time.perf_counter() - start
            self._finish(stage, i, hidden)
        self._heads(sessions[-1], heads)

    def _chunk_layer_major(self, stage: Stage, chunk: list[int]) -> None:
        """Engines streamed: the chunk through block j before block j+1, as `run_layer_major` does; the first
        block takes batches as the stage before hands them on, the last hands each on as it finishes it."""
        cache: dict = {}
        last = len(stage.blocks) - 1
        for j, block in enumerate(stage.blocks):
            session = stage.store.get(block)
            heads: dict = {}
            for i in chunk:
                if j == 0:
                    hidden = self._receive(stage, i) if stage.index > 0 else None
                else:
                    hidden = stage.activations.get(i)
                start = time.perf_counter()
                out = self._run(stage, block, session, cache, i, hidden, heads)
                if j > 0:
                    stage.activations.drop(i)
                if j == last:
                    self._finish(stage, i, out)
                elif out is not None:
                    stage.activations.put(i, self.batches[i], out, session)
                stage.timings.compute_s += time.perf_counter() - start
            self._heads(session, heads)
            stage.store.release(block)


def run_pipeline(stages: list[Stage], batches: list[Batch], chunk_list: list[list[int]], results: list,
                 progress: Callable[[int], None] = lambda n: None,
                 on_chunk_done: Callable[[list[int]], None] = lambda chunk: None, cache_inputs: bool = True,
                 transfer=identity_transfer) -> None:
    """Run every batch through every stage, filling `results[i]`; `on_chunk_done(chunk)` per finished chunk, in
    order, on this thread. Raises the first stage's error after every stage stopped."""
    pipeline = _Pipeline(stages, batches, chunk_list, results, progress, cache_inputs, transfer)
    threads = [threading.Thread(target=pipeline.worker, args=(stage,), name=f"cetrt-stage-{stage.index}", daemon=True)
               for stage in stages]
    for thread in threads:
        thread.start()
    reported = 0
    try:
        while reported < len(chunk_list):
            try:
                number = pipeline.done.get(timeout=_POLL_S)
            except queue.Empty:
                if pipeline.stop.is_set() or not any(t.is_alive() for t in threads):
                    break
                continue
            on_chunk_done(chunk_list[number])
            reported += 1
    except BaseException:
        pipeline.stop.set()
        raise
    finally:
        if reported < len(chunk_list):
            pipeline.stop.set()
        for thread in threads:
            thread.join()
    while reported < len(chunk_list) and not pipeline.done.empty():  # finished while another stage failed
        on_chunk_done(chunk_list[pipeline.done.get()])
        reported += 1
    if pipeline.errors:
        raise pipeline.errors[0]
