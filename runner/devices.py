"""`ce-run --devices N`: the runner stage over N devices, a pipeline of contiguous stages (runner/pipeline.py).

Inputs: what `evaluate` has made (manifest, backend, budget, tokenized items, batches, schedule). Each device gets
its own stage plan (cetrt/plan_devices.py), store, block loader, read statistics, memory meter and activations;
the results and the partial-results file are `evaluate`'s. The budget is per device.
On CPU every stage runs on the same CPU: the schedule and its correctness are what is tested there. On CUDA each
stage hands its hidden state to the next device with a device-to-device copy (`to_device` of
cetrt/backends/device.py); the backends' buffers are still one per process: several GPUs are written for here and
untested (no multi-GPU machine was lent).
Usage: called by `evaluate` when `RunOptions.devices > 1`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tqdm import tqdm

from cetrt.backends.base import LoadSettings
from cetrt.errors import UserError
from cetrt.plan import ModelSizes, activation_bytes_per_token, engine_bytes
from cetrt.plan_devices import DevicePlan, plan_devices, stage_chunks
from cetrt.runner.executor import (
    DiskActivations,
    MemoryActivations,
    MemoryMeter,
    ResidentStore,
    StreamingStore,
    Timings,
)
from cetrt.runner.loading import BlockLoader
from cetrt.runner.memory import RssSampler
from cetrt.runner.pipeline import Stage, identity_transfer, run_pipeline
from cetrt.storage import ReadPlan, ReadStats


def cuda_transfer(value, device: int):
    """A hidden state onto CUDA device `device`: peer to peer where the GPUs allow, never through host code here.
    A host array (spilled activations) stays as it is: the next stage's session uploads it."""
    from cetrt.backends.device import device_for

    return value if isinstance(value, np.ndarray) else device_for("cuda").to_device(value, device)


def evaluate_devices(options, engines, manifest, backend, budget: int, encoded, batches, schedule, tokenize_s: float,
                     start: float, announce):
    from cetrt.runner.evaluate import items_of_batches, make_results, save_partial

    sizes = ModelSizes(manifest.model, manifest.dtype, [engine_bytes(b) for b in manifest.blocks],
                       manifest.shared_engine_bytes)
    plan: DevicePlan = plan_devices(sizes, batches, budget, options.devices, options.chunk_tokens,
                                    schedule.prefetch_depth)
    announce(schedule.describe())
    announce(plan.describe())
    chunk_list = stage_chunks(plan, batches)
    cuda = manifest.target.device == "cuda"
    rss = RssSampler()  # its baseline before the stores' first reads, which they start as they are made
    reads, buffers = ReadPlan(requests_in_flight=schedule.requests_in_flight), backend.host_buffers(manifest.target)
    per_token = activation_bytes_per_token(manifest.model, manifest.dtype)
    stages, loaders, meters, stats = [], [], [], []
    try:
        for k, ((first, stop), stage_plan) in enumerate(zip(plan.stages, plan.plans)):
            blocks = manifest.blocks[first:stop]
            meter, stat, timings = MemoryMeter(), ReadStats(), Timings()
            load = BlockLoader(engines, manifest, backend, LoadSettings(threads=options.threads,
                                                                        io_binding=options.io_binding), stat, meter)
            if stage_plan.resident:
                store = ResidentStore(engines, blocks, stage_plan.prefetch_depth, load, timings, stat, meter, reads,
                                      buffers)
            else:
                sequence = [block for _ in chunk_list for block in blocks]
                store = StreamingStore(engines, sequence, stage_plan.prefetch_depth, load, timings, stat, meter, reads,
                                       buffers)
            activations = (MemoryActivations(meter, per_token) if stage_plan.activations == "memory"
                           else DiskActivations(meter, options.spill_dir))
            stages.append(Stage(k, blocks, store, activations, stage_plan.resident, timings))
            loaders.append(load), meters.append(meter), stats.append(stat)
        outputs: list = [None] * len(batches)
        finished: list[int] = []
        steps = len(batches) * len(manifest.blocks)
        with tqdm(total=steps, desc="scoring", unit="step", disable=not options.progress) as bar, rss:
            try:
                run_pipeline(stages, batches, chunk_list, outputs, bar.update, finished.extend,
                             cache_inputs=all(p.activations == "memory" for p in plan.plans),
                             transfer=cuda_transfer if cuda else identity_transfer)
            except UserError as error:
                saved = save_partial(options, manifest, items_of_batches(encoded, batches, finished, outputs),
                                     [batches[i] for i in finished])
                raise UserError(f"{error}{saved}") from None
    finally:
        for stage in stages:
            stage.store.close()
            stage.activations.close()
        for load in loaders:
            load.close()
    total_s = time.perf_counter() - start
    timings = Timings(load_s=sum(s.timings.load_s for s in stages), compute_s=sum(s.timings.compute_s for s in stages))
    streaming = {
        "plan": plan.to_json(),
        "schedule": dataclasses.asdict(schedule),
        "bytes_read": sum(s.bytes_read for s in stats),
        "read_s": round(sum(s.read_s for s in stats), 4),
        "blocked_on_storage_s": round(sum(s.blocked_s for s in stats), 4),
        "direct_io": all(s.direct for s in stats if s.direct is not None),
        "peak_held_bytes": max(m.peak for m in meters),
        "peak_held_bytes_per_device": [m.peak for m in meters],
        "compute_s_per_device": [round(s.timings.compute_s, 4) for s in stages],
        "peak_rss_increase_bytes": rss.peak_increase,
    }
    items = items_of_batches(encoded, batches, list(range(len(batches))), outputs)
    return make_results(manifest, options, items, batches, timings, tokenize_s=tokenize_s, total_s=total_s,
                        extra={"streaming": streaming})
