"""Where one batch's time goes in a layer block or the head: device kernels, the gaps between them, and host-side work.

Loads an engines directory as ce-run does (BlockLoader, the run's batches), takes the batch a typical token is in,
runs it through the embed and one layer block (or, with --block head, the head: in the 7B shape's synchronised
pass 0.48 s of 4.88, ten times its FLOP) a few times to warm up, then once under torch.profiler (CUDA
activity: every kernel in the process, ONNX Runtime's included). Reports: wall time of the block run, kernel
count, kernel-busy time (union of kernel intervals), the gaps (wall minus busy), the slowest kernels by total
time, the CUDA runtime calls made during the run (cudaMalloc, cudaFree, synchronisations: count and time), and
the host-side steps timed separately (batch arrays built, inputs uploaded, one run enqueued).
Usage: python bench/profile_block.py --engines /tmp/gpu/engines/smollm2 --dataset d.jsonl [--block head] --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch


def busy_union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def typical_batch(batches: list):
    """The batch a typical token is computed in: by padded tokens, the one at the token-weighted median. (Until
    2026-12-05 the batch of median row length was taken, often the short last batch of its length: 3,224 tokens
    for SmolLM2 and the 7B shape, whose runs compute most tokens in batches of 16,384 and 8,192.)"""
    ordered = sorted(batches, key=lambda b: b.shape[0] * b.shape[1])
    half, seen = sum(b.shape[0] * b.shape[1] for b in ordered) / 2, 0
    for batch in ordered:
        seen += batch.shape[0] * batch.shape[1]
        if seen >= half:
            return batch
    raise ValueError("no batches")


def profile(engines: Path, dataset: str, tokens_per_batch: int | None, repeats: int = 5, kind: str = "layers") -> dict:
    from cetrt.backends import get_backend
    from cetrt.backends.base import EngineSource, LoadSettings
    from cetrt.formats.manifest import read_manifest
    from cetrt.runner.evaluate import RunOptions, load_tokenizer, run_schedule, shape_plan
    from cetrt.runner.executor import MemoryMeter
    from cetrt.runner.loading import BlockLoader
    from cetrt.spec import HIDDEN, HIDDEN_OUT
    from cetrt.storage import ReadStats, read_verified
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.packing import make_batches, pack
    from cetrt.workload.tokens import encode_docs

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    manifest = read_manifest(engines)
    backend = get_backend(manifest.backend)
    # all items: with the first 400 (until 2026-12-05's fifth session) every padded length had few rows, so the
    # typical batch was still a short one (3,224 tokens where the runs take 16,384 and 8,192)
    options = RunOptions(engines=engines, dataset=dataset, limit=None, tokens_per_batch=tokens_per_batch)
    schedule = run_schedule(engines, manifest, options)
    encoded = encode_docs(load_tokenizer(engines, manifest), load_docs(dataset, None))
    batches = make_batches([pack(i, e) for i, e in enumerate(encoded)],
                           shape_plan(manifest, options, schedule.tokens_per_batch), manifest.model.max_positions)
    batch = typical_batch(batches)
    stats = ReadStats()
    loader = BlockLoader(engines, manifest, backend, LoadSettings(), stats, MemoryMeter())
    embed, layer = manifest.blocks[0], next(b for b in manifest.blocks if b.spec.kind == kind)
    sessions = {}
    for block in (embed, layer):
        data = read_verified(engines, block, stats)
        sessions[block.spec.index] = loader(block, EngineSource(path=engines / block.files[0].path, read=lambda d=data: d))
    host = {}
    start = time.perf_counter()
    arrays = batch.arrays()
    host["batch_arrays_s"] = time.perf_counter() - start
    start = time.perf_counter()
    inputs = {name: sessions[layer.spec.index].upload(name, a) for name, a in arrays.items()}
    sync()
    host["upload_inputs_s"] = time.perf_counter() - start
    hidden = sessions[embed.spec.index].run({n: inputs[n] for n in embed.spec.input_names})[HIDDEN_OUT]
    feeds = {n: hidden if n == HIDDEN else inputs[n] for n in layer.spec.input_names}
    session = sessions[layer.spec.index]
    for _ in range(repeats):
        session.run(feeds)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(feeds)
    host["enqueue_run_s"] = (time.perf_counter() - start) / repeats
    sync()
    host["steady_run_s"] = (time.perf_counter() - start) / repeats
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        session.run(feeds)
        sync()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]  # none on a CPU
    intervals = [(e.time_range.start / 1e6, e.time_range.end / 1e6) for e in kernels]
    by_name: dict[str, float] = defaultdict(float)
    for e in kernels:
        by_name[e.name[:90]] += (e.time_range.end - e.time_range.start) / 1e6
    busy = busy_union(intervals)
    runtime_calls: dict[str, list] = defaultdict(lambda: [0, 0.0])  # cudaMalloc, cudaFree, synchronisations
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA and e.name.startswith("cuda"):
            runtime_calls[e.name][0] += 1
            runtime_calls[e.name][1] += (e.time_range.end - e.time_range.start) / 1e6
    return {
        "engines": str(engines), "model": manifest.model_id, "block": layer.spec.name,
        "batch_shape": list(batch.shape), "padded_tokens": batch.shape[0] * batch.shape[1],
        "wall_s": wall, "kernels": len(kernels), "kernel_busy_s": busy, "gaps_s": max(0.0, wall - busy),
        "kernel_busy_fraction": busy / wall if wall else None,
        "top_kernels_s": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:12]),
        "host": host,
        "cuda_runtime_calls": {name: {"count": n, "s": round(t, 6)} for name, (n, t) in
                               sorted(runtime_calls.items(), key=lambda kv: -kv[1][1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--tokens-per-batch", type=int, default=None)
    parser.add_argument("--block", choices=("layers", "head"), default="layers",
                        help="the first layer block (default) or the head")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    result = profile(args.engines, args.dataset, args.tokens_per_batch, kind=args.block)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "top_kernels_s"}))


if __name__ == "__main__":
    main()
