"""The runner stage: an engines directory and a dataset in, scored items and metrics out.

Steps, each timed: open the manifest, load documents, tokenize the harness's way, pack and batch, plan memory
for the budget, run the blocks layer-major (engines resident or streamed), score. Latency is everything but
tokenization. If the run fails part way, the items of the chunks that finished are written to the
`partial_results` path before the error propagates.
Usage: `results = evaluate(RunOptions(engines=Path("engines/smollm2-135m"), dataset="...jsonl", limit=200))`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from cetrt.backends import get_backend
from cetrt.backends.base import LoadSettings
from cetrt.errors import UserError
from cetrt.formats.calib import read_calib_for, resolve
from cetrt.formats.manifest import Manifest, read_manifest
from cetrt.formats.results import RunResults, write_results
from cetrt.plan import activation_bytes_per_token, available_memory, chunks, parse_size, plan_memory
from cetrt.runner.executor import (
    DiskActivations,
    MemoryActivations,
    MemoryMeter,
    ResidentStore,
    StreamingStore,
    Timings,
    run_layer_major,
)
from cetrt.runner.loading import BlockLoader
from cetrt.runner.memory import RssSampler
from cetrt.runner.scoring import item_results, metrics
from cetrt.storage import DEFAULT_REQUESTS_IN_FLIGHT, ReadPlan, ReadStats
from cetrt.workload.hellaswag import DEFAULT_DATASET, load_docs
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs, offline_tokenizer


@dataclass(frozen=True)
class RunOptions:
    engines: Path
    dataset: str = DEFAULT_DATASET
    limit: int | None = None
    tokens_per_batch: int | None = None  # None: calib.json's schedule beside the engines, else 4096
    length_multiple: int = 32
    memory_budget: str | None = None  # a size ("8GiB"), "auto" (free memory), or None: the target's budget
    chunk_tokens: int | None = None  # cap on a chunk's padded tokens (default: as large as the budget allows)
    prefetch_depth: int | None = None  # None: calib.json's schedule, else 1
    spill_dir: Path | None = None
    threads: int | None = None
    io_binding: bool = False  # ORT with I/O binding on CPU too (the CUDA path's host logic)
    partial_results: Path | None = None
    progress: bool = True
    devices: int = 1  # > 1: the blocks split into a pipeline of contiguous stages, one per device (runner/devices.py)


def load_tokenizer(engines: Path, manifest: Manifest):
    return offline_tokenizer(engines / Path(manifest.tokenizer_files[0].path).parent)


@dataclass(frozen=True)
class RunSchedule:
    tokens_per_batch: int
    prefetch_depth: int
    requests_in_flight: int  # the reader's parallel requests per file
    source: str
    storage_bytes_per_s: float | None = None  # what calib measured on this storage, for the read efficiency

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
    """The engines' recorded plan (fixed optimization profiles) if they have one, else the run's options."""
    if "shape_plan" in manifest.build_options:  # smaller batches than the build's still fit its profiles
        recorded = ShapePlan.from_json(manifest.build_options["shape_plan"])
        return dataclasses.replace(recorded, tokens_per_batch=min(recorded.tokens_per_batch, tokens_per_batch))
    return ShapePlan(tokens_per_batch=tokens_per_batch, length_multiple=options.length_multiple)


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
    backend = get_backend(manifest.backend)
    if backend.version() != manifest.backend_version:
        raise UserError(
            f"{engines}: engines were built with {manifest.backend} {manifest.backend_version}, but "
            f"{backend.version()} is installed; rebuild them with `make engines`"
        )
    return engines, manifest, backend


def evaluate(options: RunOptions, announce: Callable[[str], None] = lambda text: None) -> RunResults:
    start = time.perf_counter()
    engines, manifest, backend = open_engines(options)
    budget = budget_bytes(manifest, options.memory_budget)
    docs = load_docs(options.dataset, options.limit)

    tokenize_start = time.perf_counter()
    encoded = encode_docs(load_tokenizer(engines, manifest), docs)
    tokenize_s = time.perf_counter() - tokenize_start

    schedule = run_schedule(engines, manifest, options)
    rows = [pack(i, e) for i, e in enumerate(encoded)]
    batches = make_batches(rows, shape_plan(manifest, options, schedule.tokens_per_batch), manifest.model.max_positions)
    if options.devices > 1:  # the budget is per device
        from cetrt.runner.devices import evaluate_devices
        return evaluate_devices(options, engines, manifest, backend, budget, encoded, batches, schedule, tokenize_s,
                                start, announce)
    plan = plan_memory(manifest, batches, budget, options.chunk_tokens, schedule.prefetch_depth)
    announce(schedule.describe())
    announce(plan.describe())
    chunk_list = list(chunks(batches, plan.chunk_tokens))

    timings, stats, meter = Timings(), ReadStats(), MemoryMeter()
    load = BlockLoader(engines, manifest, backend, LoadSettings(threads=options.threads, io_binding=options.io_binding),
                       stats, meter)
    reads, allocate = ReadPlan(requests_in_flight=schedule.requests_in_flight), backend.host_buffers(manifest.target)
    if plan.resident:
        store = ResidentStore(engines, manifest.blocks, plan.prefetch_depth, load, timings, stats, meter, reads,
                              allocate)
    else:
        sequence = [block for _ in chunk_list for block in manifest.blocks]
        store = StreamingStore(engines, sequence, plan.prefetch_depth, load, timings, stats, meter, reads, allocate)
    if plan.activations == "memory":
        activations = MemoryActivations(meter, activation_bytes_per_token(manifest.model, manifest.dtype, batches))
    else:
        activations = DiskActivations(meter, options.spill_dir)
    outputs: list = [None] * len(batches)
    finished: list[int] = []
    steps = len(batches) * len(manifest.blocks)
    with tqdm(total=steps, desc="scoring", unit="step", disable=not options.progress) as bar, RssSampler() as rss:
        try:
            run_layer_major(manifest.blocks, store, batches, chunk_list, activations, timings, outputs, bar.update,
                            finished.extend, cache_inputs=plan.activations == "memory")
        except UserError as error:
            saved = _save_partial(options, manifest, encoded, [batches[i] for i in finished], [outputs[i] for i in finished])
            raise UserError(f"{error}{saved}") from None
        finally:
            store.close()
            load.close()
            activations.close()
    total_s = time.perf_counter() - start
    streaming = {
        "plan": plan.to_json(),
        "schedule": dataclasses.asdict(schedule),
        "bytes_read": stats.bytes_read,
        "read_s": round(stats.read_s, 4),
        "read_bytes_per_s": round(stats.bytes_per_s),
        "read_efficiency": (round(stats.bytes_per_s / schedule.storage_bytes_per_s, 4)
                            if schedule.storage_bytes_per_s and stats.read_s > 0 else None),
        "blocked_on_storage_s": round(stats.blocked_s, 4),
        "overlap": round(1 - stats.blocked_s / max(total_s - tokenize_s, 1e-9), 4),
        "direct_io": stats.direct,
        "peak_held_bytes": meter.peak,
        "peak_rss_increase_bytes": rss.peak_increase,
    }
    return make_results(manifest, options, item_results(encoded, batches, outputs), batches, timings,
                        tokenize_s=tokenize_s, total_s=total_s, extra={"streaming": streaming})


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


def _save_partial(options: RunOptions, manifest: Manifest, encoded, done_batches, done_outputs) -> str:
    """Nothing of a failed run is lost: the finished chunks' items go to `partial_results`, if given."""
    if not options.partial_results or not done_batches:
        return ""
    items = item_results(encoded, done_batches, done_outputs)
    write_results(options.partial_results, make_results(manifest, options, items, done_batches, Timings(), 0.0, 0.0,
                                                        extra={"complete": False}))
    return f"; the {len(items)} items of the finished chunks were written to {options.partial_results}"
