"""Measure this machine with the backend at hand, and choose the run's schedule from the measurements.

Measured, on the exported blocks with ONNX Runtime on the target's device (TensorRT engines cannot be timed
before they are built, and full TensorRT is not here: calib.json says which backend measured):
- storage read bandwidth: the layer blocks' files read by the runner's own reader with O_DIRECT (or through the
  page cache where the file system refuses it, and then an upper bound, said so) at 1 to 8 requests in
  flight, and the rate of the per-chunk digest check (xxh3-128) the reader does beside its reads;
- engine load time per block: creating a session from a layer block (engines with weights inside), and
  binding a block's weights to a shared engine type (weights as inputs), from page-locked memory on a GPU as
  the runner's reader leaves them;
- compute time of a layer block (built as ce-build builds it by default: weights as inputs, attention fused
  for ONNX Runtime on a GPU) and of the head at several batch sizes, each size in sessions of its own as a
  run's, on real packed batches of the dataset filled to each size as a run's are, each batch at its steady
  rate (the fastest of two runs after two untimed: a shared engine type sees each batch shape again in every
  layer, so first-run costs amortize);
- the fixed cost of an engine call: one layer and two layers merged into one engine (cetrt.merging), weights
  bound as the runner binds them, on the same batches of 4,096 tokens: 2 x t(1) - t(2) is what a call costs
  beyond its layers.
Chosen: tokens per batch (the smallest reaching 95% of the best measured throughput), the layers merged per
engine (the fewest that bring the call cost under 5% of the compute, within 1/16 of the device's memory), the
requests in flight
(the fewest within 5% of the best read rate), the read-ahead depth, and the chunk size above which one read
ahead hides a block's read behind its compute.
Usage: `measured = measure(export_dir, exported, target, dataset)`; `schedule = choose_schedule(measured)`.
"""

from __future__ import annotations

import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cetrt.backends import get_backend
from cetrt.backends.base import EngineSource, LoadSettings, WeightsBound
from cetrt.backends.device import first_element
from cetrt.calib.flop import layer_block_flop
from cetrt.files import CHUNK_DIGEST, CHUNK_DIGESTS
from cetrt.formats.blocks import TOKENIZER_DIR, ExportedModel
from cetrt.formats.weights import split_block
from cetrt.gpu import current_gpu, device_memory_bytes
from cetrt.merging import merge_layers
from cetrt.spec import HIDDEN, Target
from cetrt.storage import DEFAULT_REQUEST_BYTES, DEFAULT_REQUESTS_IN_FLIGHT, ReadPlan, ReadPool, ReadStats, read_file
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_docs
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import offline_tokenizer

SIZES = (512, 1024, 2048, 4096)
GPU_SIZES = (8192, 16384)  # a GPU's per-call overhead rewards larger batches: measured there too
TOKENS_PER_SIZE = 16384  # padded tokens timed per batch size, after one warm-up batch
STORAGE_BYTES = 2 << 30  # read at most this much to measure bandwidth (over all the request depths)
REQUESTS_IN_FLIGHT = (1, 2, 4, 8)
NEAR_BEST = 0.95
MERGE_TOKENS = 4096  # batch size at which the per-call cost is measured
MERGE_BATCHES = 4  # batches of that size (_typical_first), each timed at its steady rate (_steady_run)
WARM_RUNS = 2  # untimed runs of each new batch shape before timing it (_steady_run)
TIMED_RUNS = 2  # then timed runs of it; the fastest counts
SUSTAIN_S = 3.0  # on a GPU, seconds of a size's batches back to back before timing them at sustained clocks
CALL_SHARE = 0.05  # merge layers until the per-call cost is at most this share of an engine's compute
MERGE_MEMORY_SHARE = 1 / 16  # a merged engine's weights at most this share of the device's memory


def measure(export_dir: Path, exported: ExportedModel, target: Target, dataset: str, items: int = 400,
            sizes: tuple[int, ...] | None = None, progress=lambda text: None) -> dict:
    """The "measured" section of calib.json (at `sizes` tokens per batch, default SIZES)."""
    sizes = sizes or (SIZES + GPU_SIZES if target.device == "cuda" else SIZES)
    layers = [b for b in exported.blocks if b.spec.kind == "layers"]
    block = layers[0]
    backend = get_backend("onnxruntime")
    progress("storage read bandwidth")
    storage = _storage_bandwidth(export_dir, layers)
    progress("engine load time")
    path = export_dir / block.onnx_file.path
    load_times, session = [], None
    for _ in range(2):
        start = time.perf_counter()
        session = backend.load(EngineSource(path=path), target, LoadSettings())
        load_times.append(time.perf_counter() - start)
    session.close()
    split = split_block(path)  # one read of the block's weights for the bind, the compute and the call cost
    make_engine = _engine_maker(backend, target, split, path)
    engine = make_engine()
    bind_s = _bind_time(engine, split.weights, backend.host_buffers(target))
    engine.close()
    progress("compute per layer block and of the head")
    head = next(b for b in exported.blocks if b.spec.kind == "head")
    rows = pack_docs(offline_tokenizer(export_dir / TOKENIZER_DIR), load_docs(dataset, items))
    sessions = {"layers": (lambda: WeightsBound(make_engine(), split.weights, owns_engine=True), block),
                "head": (lambda: backend.load(EngineSource(path=export_dir / head.onnx_file.path), target,
                                              LoadSettings()), head)}
    compute = _compute(sessions, exported, rows, sizes, SUSTAIN_S if target.device == "cuda" else 0.0)
    progress("the fixed cost of an engine call")
    merge = _call_cost(backend, target, export_dir, layers, exported, rows, split)
    gpu = current_gpu() if target.device == "cuda" else None
    return {
        "target": target.name,
        "device": target.device,
        "device_name": gpu.name if gpu else platform.processor() or platform.machine(),
        "backend": f"onnxruntime {backend.version()}",
        "storage": storage,
        "load_s_per_block": round(min(load_times), 4),
        "bind_s_per_block": round(bind_s, 4),
        "load_note": "load_s_per_block: a session from one layer block (engines with weights inside); "
                     "bind_s_per_block: its weights bound to a shared engine type (weights as inputs); reads excluded",
        "compute": compute,
        "compute_block": block.spec.name,
        "layers_per_block": block.spec.last_layer - block.spec.first_layer,
        "merge": merge,
    }


def _call_cost(backend, target: Target, export_dir: Path, layers, exported: ExportedModel, rows,
               first) -> dict | None:
    """One layer block and the first two merged (cetrt.merging), weights bound as the runner binds them, timed on
    the same packed batches: what one call costs beyond its layers, and what a layer costs. `first` is the first
    layer block already split. None for a model of one layer block."""
    if len(layers) < 2:
        return None
    splits = [first, split_block(export_dir / layers[1].onnx_file.path)]
    batches = _typical_first(rows, MERGE_TOKENS, exported)[:MERGE_BATCHES]
    rng = np.random.default_rng(0)
    feeds = [_with_hidden(batch, exported, rng) for batch in batches]  # the same inputs for both
    seconds = []
    for split in (splits[0], merge_layers(splits)):
        make_engine = _engine_maker(backend, target, split, export_dir / layers[0].onnx_file.path)
        session = WeightsBound(make_engine(), split.weights, owns_engine=True)
        seconds.append(sum(_steady_run(session, layers[0], f) for f in feeds) / len(feeds))
        session.close()
    one, two = seconds
    first, second = (b.spec.last_layer - b.spec.first_layer for b in layers[:2])
    per_layer = max(0.0, (two - one) / second)  # t(1) = call + first x layer; t(2) = call + (first + second) x layer
    return {"tokens_per_batch": MERGE_TOKENS, "batches": len(batches),
            "mean_padded_tokens": round(sum(b.shape[0] * b.shape[1] for b in batches) / len(batches)),
            "one_block_s": round(one, 6),
            "two_blocks_merged_s": round(two, 6), "call_s": round(max(0.0, one - first * per_layer), 6),
            "layer_s": per_layer,
            "block_bytes": max(sum(f.bytes for f in b.files) for b in layers),
            "layers_per_block": layers[0].spec.last_layer - layers[0].spec.first_layer,
            "device_memory_bytes": device_memory_bytes(target.device)}


def layers_per_engine(merge: dict | None, num_layers: int, batch: dict, layers_per_block: int) -> dict:
    """The fewest layers per engine that bring the measured call cost under CALL_SHARE of an engine's compute on
    the schedule's own batches (`batch`: the compute row of the chosen tokens per batch, its `s_per_token` through
    a block of `layers_per_block` layers), within MERGE_MEMORY_SHARE of the
    device's memory and the model's layers; with the reason. The call cost is per call whatever the batch, so a
    larger batch needs fewer layers to hide it: judged at 4,064 tokens, the 7B shape merged 4 layers for 16,384-token
    batches and computed 18% slower than with 2 layers and 4,096 (bench/results/gpu_steps/llama7b.json)."""
    if not merge:
        return {}
    per_block = merge["layers_per_block"]
    cap = max(per_block, int(merge["device_memory_bytes"] * MERGE_MEMORY_SHARE // merge["block_bytes"]) * per_block)
    tokens = batch["tokens_per_batch"]
    layer_s = batch["s_per_token"] * tokens / layers_per_block
    if merge["layer_s"] > 0 and layer_s > 0:
        wanted = max(1, math.ceil(merge["call_s"] / (CALL_SHARE * layer_s)))
    else:  # a second layer cost nothing measurable: the call is all there is
        wanted = num_layers
    chosen = max(per_block, min(wanted, cap, num_layers))
    return {"layers_per_engine": chosen,
            "layers_per_engine_reason": (
                f"an engine call costs {merge['call_s'] * 1e3:.2f} ms beyond its layers (measured at "
                f"{merge.get('mean_padded_tokens', merge['tokens_per_batch']):,} tokens a batch) and a layer "
                f"{layer_s * 1e3:.2f} ms at the schedule's {tokens:,}: {wanted} layer(s) bring the "
                f"call under {CALL_SHARE:.0%}" + (f", capped at {chosen} (1/16 of the device's memory, or the model's "
                                                   "layers)" if chosen < wanted else ""))}


def _storage_bandwidth(export_dir: Path, layers) -> dict:
    """The runner's own reader (cetrt/storage.py) on the layer blocks' files, O_DIRECT, at the request size the
    build records digests for, with 1 to 8 requests in flight; and the rate of the per-chunk digest check (the
    algorithm the build writes, `CHUNK_DIGEST`) on as many threads as the reader uses."""
    paths = [export_dir / f.path for block in layers for f in block.files]
    by_requests, direct = [], True
    for depth in REQUESTS_IN_FLIGHT:
        stats, pool = ReadStats(), ReadPool(ReadPlan(requests_in_flight=depth))
        try:
            for path in paths:
                if stats.bytes_read >= STORAGE_BYTES // len(REQUESTS_IN_FLIGHT):
                    break
                data = read_file(path, stats, pool=pool)
        finally:
            pool.close()
        direct &= bool(stats.direct)
        by_requests.append({"requests_in_flight": depth, "bytes": stats.bytes_read,
                            "bytes_per_s": round(stats.bytes_per_s)})
    best = max(by_requests, key=lambda r: r["bytes_per_s"])
    return {"bytes_per_s": best["bytes_per_s"], "bytes": sum(r["bytes"] for r in by_requests),
            "request_bytes": DEFAULT_REQUEST_BYTES, "by_requests_in_flight": by_requests,
            "verify_bytes_per_s": round(_digest_rate(data, DEFAULT_REQUESTS_IN_FLIGHT)),
            "verify_digest": CHUNK_DIGEST, "verify_threads": DEFAULT_REQUESTS_IN_FLIGHT, "files": len(paths),
            "direct_io": direct,
            "note": "O_DIRECT: the page cache bypassed" if direct else
                    "through the page cache (this file system refuses O_DIRECT): an upper bound, not the device's speed"}


def _digest_rate(data: memoryview, threads: int, chunk: int = DEFAULT_REQUEST_BYTES) -> float:
    """The chunk digest the build writes, over chunks of `data` on `threads` threads, as the reader checks what it
    reads (bytes/s)."""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] * max(1, (64 << 20) // max(1, len(data)))
    digest = CHUNK_DIGESTS[CHUNK_DIGEST]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(digest, pieces))
    return sum(len(p) for p in pieces) / max(time.perf_counter() - start, 1e-9)


def _bind_time(engine, weights: dict[str, np.ndarray], buffers) -> float:
    """Weights as inputs: the time to bind one block's weights to its engine type (to the device on a GPU), from
    where the runner's reader leaves them (`buffers`: the backend's host buffers), page-locked memory on a GPU
    (a copy from pageable memory took 7x as long on the H200 as the runner's binds, and ce-predict's load term
    with it)."""
    weights = _in_read_buffers(weights, buffers)
    start = time.perf_counter()
    WeightsBound(engine, weights).close()
    return time.perf_counter() - start


def _in_read_buffers(weights: dict[str, np.ndarray], buffers) -> dict[str, np.ndarray]:
    """The arrays copied into the buffers the backend's reader reads into (`Backend.host_buffers`), if any."""
    if buffers is None:
        return weights
    placed = {}
    for name, array in weights.items():
        buffer = buffers.take(array.nbytes)
        if buffer is None:
            return weights
        placed[name] = np.frombuffer(buffer, dtype=array.dtype, count=array.size).reshape(array.shape)
        placed[name][...] = array
    return placed


def _engine_maker(backend, target: Target, split, path: Path):
    """New sessions of a layer engine as ce-build makes one by default: weights as inputs, the graph as the
    backend builds it for the target (ONNX Runtime on a GPU: attention fused), so calib times what ce-run will
    run. The graph is rewritten and serialized once, however many sessions are made from it."""
    graph = backend.graph_for(split.graph, target).SerializeToString()
    return lambda: backend.load(EngineSource(path=path, read=lambda: graph), target, LoadSettings())


def _typical_first(rows, size: int, exported: ExportedModel) -> list:
    """Full batches of `size` tokens, one per padded length, typical lengths first (nearest the median): each
    length's rows, repeated as needed, fill its batch as a run's 10,042 items fill theirs. Cut from calib's few
    hundred items as a run cuts them, the batches held about half their size (400 items: the first four of
    4,096 tokens held 672 to 3,224, and 8,192 and 16,384 cut the same batches), so sizes were compared on
    batches of nearly one size."""
    plan = ShapePlan(tokens_per_batch=size)
    lengths = [plan.padded_length(row.length) for row in rows]
    by_length: dict[int, list] = {}
    for length, row in zip(lengths, rows):
        by_length.setdefault(length, []).append(row)
    middle = sorted(lengths)[len(lengths) // 2]  # the median row's length
    batches = []
    for length in sorted(by_length, key=lambda n: (abs(n - middle), n)):
        same = by_length[length]
        count = plan.batch_size(length)
        filled = (same * -(-count // len(same)))[:count]
        batches.extend(make_batches(filled, plan, exported.model.max_positions))
    return batches


def _with_hidden(batch, exported: ExportedModel, rng) -> dict:
    """A batch's inputs with random hidden states in the export's precision, as a layer block takes them."""
    dtype = np.float16 if exported.dtype == "float16" else np.float32
    inputs = batch.arrays()
    inputs[HIDDEN] = rng.standard_normal((*batch.shape, exported.model.hidden_size)).astype(dtype)
    return inputs


def _compute(sessions: dict, exported: ExportedModel, rows, sizes: tuple[int, ...],
             sustain_s: float = 0.0) -> list[dict]:
    """Per batch size: a layer block's time and rate, and the head's time per scored slot (its log-softmax over
    the vocabulary is memory-bound, so FLOP alone would under-count it). `sessions`: kind -> (a function making
    a new session, its block). Each size gets sessions of its own, as a run's sessions see one batch size only:
    one session taken through every size measured 8,192-token batches of the 30B shape at twice the per-token
    time of 2,048 on the H200, where sessions of their own measured them 20% faster (bench/attention_ab.py).
    With `sustain_s` (a GPU), also the size's time at sustained clocks (`_sustained_pass`)."""
    layer_block = sessions["layers"][1]
    layers = layer_block.spec.last_layer - layer_block.spec.first_layer
    rng = np.random.default_rng(0)
    results = []
    for size in sizes:
        timed, seconds, flop, head_s, slots = 0, 0.0, 0.0, 0.0, 0
        opened = {kind: (make(), block) for kind, (make, block) in sessions.items()}
        try:
            batches = _timing_batches(_typical_first(rows, size, exported))
            feeds = []
            for n, batch in enumerate(batches):
                inputs = _with_hidden(batch, exported, rng)
                feeds.append(inputs)
                elapsed = {kind: _steady_run(session, block, inputs) for kind, (session, block) in opened.items()}
                if n == 0:
                    continue  # warm-up: first-run allocations
                timed += batch.shape[0] * batch.shape[1]
                seconds += elapsed["layers"]
                flop += layer_block_flop(exported.model, layers, batch)
                head_s += elapsed["head"]
                slots += len(batch.rows) * batch.slots
            sustained = _sustained_pass(*opened["layers"], feeds, sustain_s) if sustain_s > 0 else None
        finally:
            for session, _ in opened.values():
                session.close()
        if timed:
            padded = sum(b.shape[0] * b.shape[1] for b in batches)
            results.append({"tokens_per_batch": size, "padded_tokens": timed,
                            "s_per_layer_block": round(seconds, 6), "s_per_token": seconds / timed,
                            "flop_per_s": round(flop / seconds), "head_s_per_slot": head_s / slots,
                            **({"s_per_token_sustained": sustained / padded} if sustained is not None else {})})
    return results


def _sustained_pass(session, block, feeds: list[dict], sustain_s: float) -> float:
    """The size's batches run one after the other as a run's chunk goes through a layer (no wait between them,
    outputs kept), timed after `sustain_s` seconds of the same: the faster of TIMED_RUNS passes at the clocks a
    long run holds. A GPU at full load lowers its clocks to stay within its power limit within a few seconds:
    on the H200 the FP16 matmul rate fell from 758 TFLOP/s (20 matmuls) to 638 within 3 s and stayed there, its
    SM clock at 1,410 MHz under the power cap, and the 30B run's compute took 2.06 us a layer token where the
    steady rate (each batch alone, a few runs) said 1.80 and these passes without the heat 1.74
    (bench/results/gpu_steps/sustained.json, llama30b.json). ce-predict times compute at this rate."""
    uploaded = [{name: session.upload(name, inputs[name]) for name in block.spec.input_names} for inputs in feeds]

    def one_pass() -> float:
        start = time.perf_counter()
        _wait(session, [session.run(f) for f in uploaded][-1])
        return time.perf_counter() - start

    heated = one_pass()
    while heated < sustain_s:
        heated += one_pass()
    return min(one_pass() for _ in range(TIMED_RUNS))


def _timing_batches(batches: list) -> list:
    """The batches `_compute` runs at a size: the first as a warm-up, then the next ones until TOKENS_PER_SIZE
    padded tokens are timed (bench/calib_batches.py counts them)."""
    timed = 0
    for n, batch in enumerate(batches[1:], start=1):
        timed += batch.shape[0] * batch.shape[1]
        if timed >= TOKENS_PER_SIZE:
            return batches[: n + 1]
    return batches


def _steady_run(session, block, inputs: dict) -> float:
    """A batch's time once its shape is steady: the fastest of TIMED_RUNS runs after WARM_RUNS untimed ones. A
    shared engine type sees each batch shape again in every layer (60 times a chunk on the 30B shape), so what a
    new shape costs at first amortizes. Not the first run (kernel choice), and not the second either: on the
    H200 with ONNX Runtime's CUDA provider, the 30B layer's second runs (each after the shape's first, the head
    run between batches) took 2.42 us a token at 4,096 tokens and 3.81 at 8,192, where the same calib's later
    runs of 4,064-token batches (the call cost's passes) took 1.80 and a profile of steady 8,192-token runs 1.84
    (gpu_steps/prep30b.json, README), so calib chose 2,048 tokens a batch. Which of the two differences made
    the second runs slow was not isolated; four consecutive runs, the last two timed, avoid both."""
    feeds = {name: session.upload(name, inputs[name]) for name in block.spec.input_names}
    for _ in range(WARM_RUNS):
        _wait(session, session.run(feeds))
    seconds = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        _wait(session, session.run(feeds))
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def _wait(session, outputs: dict) -> None:
    """Wait for a run by bringing one element of its output to the host: the whole output would add a copy to
    the host that the runner never makes to every call timed (on the 30B shape, 54 MB a 4,096-token batch)."""
    session.to_host(first_element(next(iter(outputs.values()))))


def _requests_in_flight(storage: dict) -> dict:
    """The fewest requests in flight within 5% of the best measured read rate (none measured: no choice)."""
    measured = storage.get("by_requests_in_flight") or []
    if not measured:
        return {}
    best = max(r["bytes_per_s"] for r in measured)
    chosen = min((r for r in measured if r["bytes_per_s"] >= NEAR_BEST * best), key=lambda r: r["requests_in_flight"])
    return {"requests_in_flight": chosen["requests_in_flight"],
            "requests_in_flight_reason": f"the fewest requests in flight reading within {1 - NEAR_BEST:.0%} of the best "
                                         f"measured rate ({chosen['bytes_per_s'] / 1e9:.2f} of {best / 1e9:.2f} GB/s)"}


def choose_schedule(measured: dict, largest_block_bytes: int, num_layers: int = 1) -> dict:
    """Tokens per batch, read-ahead depth, and the chunk size that hides reads, with the reason for each."""
    compute = measured["compute"]
    best = max(c["flop_per_s"] for c in compute)
    chosen = min((c for c in compute if c["flop_per_s"] >= NEAR_BEST * best), key=lambda c: c["tokens_per_batch"])
    read_s = largest_block_bytes / measured["storage"]["bytes_per_s"]
    hide_tokens = int(read_s / chosen["s_per_token"]) + 1
    return {
        **_requests_in_flight(measured["storage"]),
        **layers_per_engine(measured.get("merge"), num_layers, chosen, measured.get("layers_per_block", 1)),
        "tokens_per_batch": chosen["tokens_per_batch"],
        "tokens_per_batch_reason": (
            f"the smallest measured batch reaching {NEAR_BEST:.0%} of the best throughput "
            f"({chosen['flop_per_s'] / 1e9:,.0f} of {best / 1e9:,.0f} GFLOP/s)"),
        "prefetch_depth": 1,
        "prefetch_reason": (
            f"reading the largest block takes {read_s:.3f} s, its compute {chosen['s_per_token'] * 1e6:.2f} us per "
            f"token: one read ahead hides the reads once a chunk holds {hide_tokens:,} tokens, and the planner makes "
            "chunks as large as the memory budget allows; a deeper read-ahead only takes memory from the chunk"),
        "hide_reads_from_chunk_tokens": hide_tokens,
    }
