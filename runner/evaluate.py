"""The runner stage: an engines directory and a dataset in, scored items and metrics out.

Steps, each timed: open the manifest, load documents, tokenize the harness's way (while a thread makes the device
and the engine types ready: `BlockLoader.prepare`), pack and batch, plan memory for the budget, start reading the
engines, wait for that thread if it is not done, run the blocks layer-major (engines resident or streamed), score. Latency is everything but tokenization. With a `journal` path, every finished chunk's items are appended to the run journal
(runner/journal.py) and a rerun with the same arguments resumes from it; SIGINT and SIGTERM stop the run at the
next batch (runner/interrupt.py). If the run fails or is stopped part way, the items that finished are also
written to the `partial_results` path, and the one-line error names both.
Usage: `results = evaluate(RunOptions(engines=Path("engines/smollm2-135m"), dataset="...jsonl", limit=200))`.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from cetrt.backends import get_backend
from cetrt.backends.base import LoadSettings
from cetrt.errors import Interrupted, UserError
from cetrt.files import sha256_file
from cetrt.formats.calib import read_calib_for, resolve
from cetrt.formats.manifest import MANIFEST_FILE, Manifest, read_manifest
from cetrt.formats.results import RunResults, write_results
from cetrt.outputs import check_output_file
from cetrt.plan import Pacing, activation_bytes_per_token, available_memory, parse_size, plan_memory
from cetrt.runner.executor import (
    DiskActivations,
    MemoryActivations,
    MemoryMeter,
    ResidentStore,
    StreamingStore,
    Timings,
    run_layer_major,
)
from cetrt.runner.interrupt import StopOnSignal, StopRequested
from cetrt.runner.journal import RunJournal, digest
from cetrt.runner.loading import BlockLoader
from cetrt.runner.memory import RssSampler, process_age_s
from cetrt.runner.scoring import item_results, metrics
from cetrt.storage import DEFAULT_REQUESTS_IN_FLIGHT, ReadPlan, ReadStats, readers_first
from cetrt.switches import switch
from cetrt.workload.hellaswag import default_dataset, load_docs
from cetrt.workload.packing import make_batches, pack_all
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs, offline_tokenizer


@dataclass(frozen=True)
class RunOptions:
    engines: Path
    dataset: str | None = None  # None: the one default (cetrt.workload.hellaswag.default_dataset)
    limit: int | None = None
    tokens_per_batch: int | None = None  # None: calib.json's schedule beside the engines, else 4096
    length_multiple: int | None = None  # rows padded to a multiple of this; None: the engines' plan, else ShapePlan's
    memory_budget: str | None = None  # a size ("8GiB"), "auto" (free memory), or None: the target's budget
    chunk_tokens: int | None = None  # cap on a chunk's padded tokens (default: as large as the budget allows)
    prefetch_depth: int | None = None  # None: calib.json's schedule, else 1
    spill_dir: Path | None = None
    spill: bool = False  # hidden states on disk between blocks, engines streamed, whatever the budget (the third tier)
    threads: int | None = None
    io_binding: bool = False  # ORT with I/O binding on CPU too (the CUDA path's host logic)
    partial_results: Path | None = None
    journal: Path | None = None  # the run journal: finished chunks on disk, and what a rerun resumes from
    progress: bool = True
    devices: int = 1  # > 1: the blocks split into a pipeline of contiguous stages, one per device (runner/devices.py)


# What one item takes in results.json and in the journal (its scores, lengths, flags as JSON), with room to spare.
ITEM_BYTES = 1024


def load_tokenizer(engines: Path, manifest: Manifest):
    """The engines' tokenizer (its files were checked against the manifest's sha256 by `open_engines`)."""
    fix = "it changed after the build; rebuild the engines with `make engines`"
    directory = engines / Path(manifest.tokenizer_files[0].path).parent
    try:
        return offline_tokenizer(directory)
    except Exception as e:  # tokenizers and transformers raise many types for a file they cannot use
        raise UserError(f"{directory}: cannot load the tokenizer ({type(e).__name__}: {str(e)[:200]}); {fix}") from None


@dataclass(frozen=True)
class RunSchedule:
    tokens_per_batch: int
    prefetch_depth: int
    requests_in_flight: int  # the reader's parallel requests per file
    source: str
    storage_bytes_per_s: float | None = None  # calib's on this storage: the read efficiency, the first chunk's size

    def describe(self) -> str:
        return (f"  schedule     {self.tokens_per_batch:,} tokens per batch, {self.prefetch_depth} read ahead, "
                f"{self.requests_in_flight} requests in flight ({self.source})")


def run_schedule(engines: Path, manifest: Manifest, options: RunOptions) -> RunSchedule:
    """The options where given, else the calibration beside the engines, else the defaults; says which."""
    calib = read_calib_for(engines, manifest.model_hash, manifest.build_options.get("export_digest", ""))
    tokens = resolve(options.tokens_per_batch, calib, "tokens_per_batch", ShapePlan.tokens_per_batch)
    depth = resolve(options.prefetch_depth, calib, "prefetch_depth", 1)
    requests = resolve(None, calib, "requests_in_flight", DEFAULT_REQUESTS_IN_FLIGHT)
    origin = calib.origin if calib else "defaults: no calib.json beside the engines"
    given = [name for name, r in (("--tokens-per-batch", tokens), ("--prefetch-depth", depth)) if r.source == "given"]
    source = origin if not given else f"{', '.join(given)} as given; otherwise {origin}"
    measured = (calib.measured.get("storage") or {}).get("bytes_per_s") if calib else None
    return RunSchedule(int(tokens.value), int(depth.value), int(requests.value), source,
                       float(measured) if measured else None)


def shape_plan(manifest: Manifest, options: RunOptions, tokens_per_batch: int) -> ShapePlan:
    """The engines' recorded plan (fixed optimization profiles) if they have one, else the run's options; a given
    length multiple applies to either (a profile's L range takes any length in it)."""
    multiple = {"length_multiple": options.length_multiple} if options.length_multiple else {}
    if "shape_plan" in manifest.build_options:  # smaller batches than the build's still fit its profiles
        recorded = ShapePlan.from_json(manifest.build_options["shape_plan"])
        return dataclasses.replace(recorded, tokens_per_batch=min(recorded.tokens_per_batch, tokens_per_batch),
                                   **multiple)
    return ShapePlan(tokens_per_batch=tokens_per_batch, **multiple)


def budget_bytes(manifest: Manifest, option: str | None) -> int:
    if option is None:
        return manifest.target.memory_bytes
    return available_memory() if option == "auto" else parse_size(option)


def open_engines(options: RunOptions):
    engines = Path(options.engines)
    manifest = read_manifest(engines)
    if manifest.build_options.get("check"):
        raise UserError(f"{engines}: built with --check (parse and build only, for {manifest.target.name} without its "
                        "GPU); these engines are not for running. Build on the target device with `make engines`")
    manifest.check_side_files(engines)
    backend = get_backend(manifest.backend)
    if backend.version() != manifest.backend_version:
        raise UserError(
            f"{engines}: engines were built with {manifest.backend} {manifest.backend_version}, but "
            f"{backend.version()} is installed; rebuild them with `make engines`"
        )
    return engines, manifest, backend


def evaluate(options: RunOptions, announce: Callable[[str], None] = lambda text: None) -> RunResults:
    with StopOnSignal() as stop, readers_first():
        return _evaluate(options, announce, stop)


def _evaluate(options: RunOptions, announce: Callable[[str], None], stop: StopOnSignal) -> RunResults:
    start, process_age = time.perf_counter(), process_age_s()
    if options.spill and options.devices > 1:
        raise UserError("--spill with --devices > 1: the pipeline of devices plans each stage's activations itself; "
                        "drop one of the two")
    engines, manifest, backend = open_engines(options)
    budget = budget_bytes(manifest, options.memory_budget)
    dataset = options.dataset or default_dataset()
    options = dataclasses.replace(options, dataset=dataset)
    docs = load_docs(dataset, options.limit)
    for path, what in ((options.journal, "the run journal"), (options.partial_results, "the partial results")):
        if path is not None:  # before any work: a run must not finish with nowhere to put its results
            check_output_file(path, what, needed=2 * ITEM_BYTES * len(docs))

    timings, stats, meter = Timings(), ReadStats(), MemoryMeter()
    load = BlockLoader(engines, manifest, backend, LoadSettings(threads=options.threads, io_binding=options.io_binding),
                       stats, meter)
    preparing = Beside(load.prepare if options.devices == 1 and prepare_beside_tokenizing() else None)
    tokenize_start = time.perf_counter()
    encoded = encode_docs(load_tokenizer(engines, manifest), docs)
    tokenize_s = time.perf_counter() - tokenize_start

    schedule = run_schedule(engines, manifest, options)
    rows = pack_all(encoded)
    batches = make_batches(rows, shape_plan(manifest, options, schedule.tokens_per_batch), manifest.model.max_positions,
                           item_name=lambda i: f"item ind={docs[i].ind!r} (document {i + 1} of {dataset})")
    if options.devices > 1:  # the budget is per device; no run journal on this path yet
        from cetrt.runner.devices import evaluate_devices
        return evaluate_devices(options, engines, manifest, backend, budget, encoded, batches, schedule, tokenize_s,
                                start, announce)
    journal = None
    if options.journal is not None:
        key = {"manifest_sha256": manifest_digest(engines), "dataset": str(dataset), "limit": options.limit,
               "dataset_digest": digest(docs),
               "batches_digest": digest((b.shape, [r.item for r in b.rows]) for b in batches)}
        journal = RunJournal.open(options.journal, key, announce)
    done: dict[int, dict] = dict(journal.finished) if journal else {}
    remaining = [i for i in range(len(batches)) if i not in done]
    todo = [batches[i] for i in remaining]
    announce(schedule.describe())
    outputs: list = [None] * len(batches)
    scored: dict[int, dict] = dict(done)  # batch -> its items by document index: resumed, then as each chunk finishes
    plan = None
    if todo:
        pacing = Pacing(seconds_per_token=calib_seconds_per_token(engines, manifest),
                        read_bytes_per_s=schedule.storage_bytes_per_s, journal=journal is not None)
        plan = plan_memory(manifest, todo, budget, options.chunk_tokens, schedule.prefetch_depth, pacing, options.spill)
        announce(plan.describe())
        if journal:
            announce(f"  journal      {options.journal}: {kill_cost(plan)}")
        chunk_list = [[remaining[j] for j in chunk] for chunk in plan.chunk_indices(todo)]

        def chunk_done(chunk: list[int]) -> None:
            for i in chunk:  # scored once, here: the journal and the results take the same items
                scored[i] = _items_of(encoded, batches[i], outputs[i])
                outputs[i] = None
            if journal:
                journal.record(chunk, [scored[i] for i in chunk])

        def step(n: int) -> None:
            bar.update(n)
            stop.check()

        as_read = loads_as_read()
        if not as_read:  # the order before 2026-12-04: the preparation done before the first read
            preparing.wait()
        rss = RssSampler()  # its baseline before the store's first read: what the reads and loads take is counted
        device_start = time.perf_counter()  # on a GPU: torch imported, the CUDA context and streams made
        reads, buffers = ReadPlan(requests_in_flight=schedule.requests_in_flight), backend.host_buffers(manifest.target)
        device_setup_s = time.perf_counter() - device_start
        if plan.resident:
            store = ResidentStore(engines, manifest.blocks, plan.prefetch_depth, load, timings, stats, meter, reads,
                                  buffers, as_read, prepared=preparing.settled, ahead_bytes=plan.room_bytes)
        else:
            sequence = [block for _ in chunk_list for block in manifest.blocks]
            store = StreamingStore(engines, sequence, plan.prefetch_depth, load, timings, stats, meter, reads,
                                   buffers)
        try:  # the store's first reads are under way: now wait for the engine types if they are not ready yet
            prepare_s = preparing.wait()
        except BaseException:
            store.close()
            load.close()
            raise
        if plan.activations == "memory":
            activations = MemoryActivations(meter, activation_bytes_per_token(manifest.model, manifest.dtype))
        else:
            activations = DiskActivations(meter, options.spill_dir)
        steps = len(todo) * len(manifest.blocks)
        executor_start = time.perf_counter()
        with tqdm(total=steps, desc="scoring", unit="step", disable=not options.progress) as bar, rss:
            try:
                stop.check()
                run_layer_major(manifest.blocks, store, batches, chunk_list, activations, timings, outputs, step,
                                chunk_done, cache_inputs=plan.activations == "memory")
            except (UserError, StopRequested) as error:
                kept = _in_documents_order(scored)
                saved = save_partial(options, manifest, kept, [batches[i] for i in sorted(scored)])
                where = f"; the journal {options.journal} keeps them: run the same command again to resume" if journal else ""
                if isinstance(error, StopRequested):
                    raise Interrupted(f"stopped by {error} after {len(kept)} of {len(docs)} items{saved}{where}"
                                      + ("" if journal else " (give --json to keep finished items)"),
                                      error.exit_code) from None
                raise UserError(f"{error}{saved}{where}") from None
            finally:
                store.close()
                load.close()
                activations.close()
        peak_rss = rss.peak_increase
        executor = (executor_start, time.perf_counter())
    else:
        announce(f"  resume       every batch is in {options.journal}: nothing left to run")
        peak_rss = 0
        executor = (start + tokenize_s, start + tokenize_s)
        device_setup_s = 0.0
        prepare_s = preparing.wait()
        load.close()  # engine types made ready beside tokenizing, not needed
    items = _in_documents_order(scored)
    total_s = time.perf_counter() - start
    streaming = {
        "plan": plan.to_json() if plan else None,
        "schedule": dataclasses.asdict(schedule),
        "bytes_read": stats.bytes_read,
        "read_s": round(stats.read_s, 4),
        "read_bytes_per_s": round(stats.bytes_per_s),
        "read_efficiency": (round(stats.bytes_per_s / schedule.storage_bytes_per_s, 4)
                            if schedule.storage_bytes_per_s and stats.read_s > 0 else None),
        "blocked_on_storage_s": round(stats.blocked_s, 4),
        "reader_slot_wait_s": round(stats.slot_wait_s, 4),  # the reader idle: its read-ahead slots all taken
        "reader_buffer_s": round(stats.buffer_s, 4),  # getting buffers to read into, outside read_s
        "host_buffers": backend.host_buffer_stats(manifest.target),  # of which allocating page-locked memory
        "loaded_beside_s": round(timings.load_beside_s, 4),  # resident: sessions made on the loader thread
        "overlap": round(1 - stats.blocked_s / max(total_s - tokenize_s, 1e-9), 4),
        "direct_io": stats.direct,
        "peak_held_bytes": meter.peak,
        "peak_rss_increase_bytes": peak_rss,
    }
    extra = {"streaming": streaming,
             "phases": {**phases(start, executor, total_s, tokenize_s, timings, stats.blocked_s, device_setup_s,
                                 prepare_s),
                        "process_age_at_start_s": process_age}}  # the interpreter and imports: before total_s
    if done:
        extra["resumed"] = {"journal": str(options.journal), "items": sum(len(v) for v in done.values()),
                            "batches": len(done)}
    return make_results(manifest, options, items, batches, timings, tokenize_s=tokenize_s, total_s=total_s,
                        extra=extra)


def phases(start: float, executor: tuple[float, float], total_s: float, tokenize_s: float, timings: Timings,
           blocked_s: float, device_setup_s: float, prepare_s: float = 0.0) -> dict:
    """Where the latency goes besides load, compute and waiting on storage: before the executor (engines opened,
    batches made, the plan, the device set up: `device_setup_s` of it, and any wait for the preparation that ran
    beside tokenizing), inside it but in none of those (the host between blocks, each chunk's items scored), and
    after it (the items put in order). The first three add up to the rest. `prepared_beside_tokenizing_s` is not in
    the latency where tokenizing, batching and planning took longer: the device and the engine types were made ready
    in that time (`BlockLoader.prepare`), while the store began reading; the rest is in `before_executor_s`."""
    begin, end = executor
    inside = end - begin - timings.load_s - timings.compute_s - blocked_s
    return {"before_executor_s": round(begin - start - tokenize_s, 4), "executor_other_s": round(max(0.0, inside), 4),
            "after_executor_s": round(start + total_s - end, 4),
            "of_which_device_setup_s": round(device_setup_s, 4),
            "prepared_beside_tokenizing_s": round(prepare_s, 4)}


def loads_as_read() -> bool:
    """Whether the store starts reading before the preparation is done and resident engines are loaded as they
    arrive (the default), or, with CETRT_LOAD_AS_READ=0, the order and pace before 2026-12-04 (the benchmark's
    baseline: `bench/gpu_speed.py loadab`)."""
    return switch("CETRT_LOAD_AS_READ", default=True)


def prepare_beside_tokenizing() -> bool:
    """Whether the device and engine types are made ready beside tokenizing (the default), or, with
    CETRT_PREPARE_BESIDE=0, when the executor first needs them, as before 2026-12-03 (the benchmark's baseline)."""
    return switch("CETRT_PREPARE_BESIDE", default=True)


class Beside:
    """`work` (the device and engine types made ready: `BlockLoader.prepare`) on its own thread from now on: beside
    tokenizing, batching, planning and the store's first reads, all of which need neither; `wait()` for it before
    the executor, which does. With no work, `wait()` returns at once."""

    def __init__(self, work: Callable[[], None] | None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cetrt-prepare") if work else None
        self._future = self._pool.submit(self._timed, work) if work else None

    @staticmethod
    def _timed(work: Callable[[], None]) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    def settled(self, timeout: float | None = None) -> bool:
        """Whether the work is over, done or failed (or there is none), after waiting up to `timeout` seconds for
        it (None: until it is)."""
        return self._future is None or bool(wait([self._future], timeout).done)

    def wait(self) -> float:
        """Seconds the work took (0.0 without any); its exception, if it failed."""
        if self._future is None:
            return 0.0
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=True)


def manifest_digest(engines: Path) -> str:
    """The manifest's sha256: what ties a run journal to these engines (every engine file's sha256 is in it)."""
    return sha256_file(Path(engines) / MANIFEST_FILE)


def calib_seconds_per_token(engines: Path, manifest: Manifest) -> float | None:
    """Measured seconds per padded token through the whole model, from calib.json beside the engines, if any."""
    calib = read_calib_for(engines, manifest.model_hash, manifest.build_options.get("export_digest", ""))
    per_layer = calib.seconds_per_layer_token() if calib else None
    return per_layer * manifest.model.num_layers if per_layer else None


def kill_cost(plan) -> str:
    """What an interruption can cost: the chunk in flight (and, when streaming, its pass over the weights)."""
    if plan.resident:
        first = (f" (the first of up to {plan.first_chunk_tokens:,}, so that its compute covers the reads)"
                 if plan.first_chunk_tokens != plan.chunk_tokens else "")
        return (f"chunks of up to {plan.chunk_tokens:,} padded tokens{first} reach it as they finish (engines "
                "resident: small chunks cost no extra read); a kill loses at most the chunk in flight")
    return (f"each chunk reaches it as it finishes; a kill loses at most the chunk in flight: up to "
            f"{plan.chunk_tokens:,} padded tokens and its pass over the weights "
            f"({plan.bytes_to_read / max(plan.passes, 1) / 2**30:.2f} GiB read)")


def _items_of(encoded, batch, output) -> dict:
    """One batch's items by document index."""
    return dict(zip(sorted(row.item for row in batch.rows), item_results(encoded, [batch], [output])))


def items_of_batches(encoded, batches, finished: list[int], outputs) -> list:
    """The items of the `finished` batches (scored from their head outputs), in the documents' order: the several
    devices' path, which scores at the end rather than as each chunk finishes."""
    return _in_documents_order({i: _items_of(encoded, batches[i], outputs[i]) for i in finished})


def _in_documents_order(scored: dict[int, dict]) -> list:
    """The items of every scored batch (batch -> {document index: item}), in the documents' order."""
    by_index = {}
    for items in scored.values():
        by_index.update(items)
    return [by_index[i] for i in sorted(by_index)]


def make_results(manifest: Manifest, options: RunOptions, items, batches, timings: Timings, tokenize_s: float,
                 total_s: float, extra: dict) -> RunResults:
    return RunResults(
        metrics=metrics(items),
        items=items,
        model=manifest.model_id,
        model_hash=manifest.model_hash,
        backend=manifest.backend,
        backend_version=manifest.backend_version,
        target=manifest.target.name,
        dtype=manifest.dtype,
        dataset=str(options.dataset),
        tokenize_s=tokenize_s,
        load_s=timings.load_s,
        compute_s=timings.compute_s,
        total_s=total_s,
        tokens=sum(b.tokens for b in batches),
        padded_tokens=sum(b.shape[0] * b.shape[1] for b in batches),
        batch_shapes=[b.shape for b in batches],
        extra=extra,
    )


def save_partial(options: RunOptions, manifest: Manifest, items: list, done_batches: list) -> str:
    """Nothing of a failed run is lost: the finished items go to `partial_results`, if given."""
    if not options.partial_results or not items:
        return ""
    try:
        write_results(options.partial_results, make_results(manifest, options, items, done_batches, Timings(), 0.0, 0.0,
                                                            extra={"complete": False}))
    except UserError as e:
        return f"; saving the {len(items)} finished items failed ({e})"
    return f"; the {len(items)} items of the finished chunks were written to {options.partial_results}"
