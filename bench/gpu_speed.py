"""GPU benchmarks of issues 12 and 16 (device machine): what a user waits for, cetrt against the harness's method,
both counted the same way, in one call per step; every run a separate process timed from the outside.

  smoke     a tiny random LLaMA: cuda engines score like CPU engines, resident and streamed (fails fast).
  smollm2   SmolLM2-135M: `ce-export` / `ce-calib --target cuda` / `ce-build --target cuda` with their defaults
            (what `make engines TARGET=cuda` runs) and its HF FP16 and FP32 weights as safetensors; then all items,
            page cache dropped before each: `ce-run` end to end (process, tokenizing, loading, scoring) against
            bench/hf_harness.py end to end (process, loading from safetensors, tokenizing, scoring); the FP32
            reference's accuracy; a profile of one batch through a layer block and through the head; the
            blocks' synchronised compute (bench/run_blocks.py, two passes). `ce-run` again with its GPU
            buffers through torch (CETRT_DEVICE=torch, as before 2026-12-02): the device's A/B.
  prep7b    a LLaMA-7B-shaped random model as engines (bench/random_engines.py, calibrated here) and as HF
            safetensors (other random values, same shape).
  llama7b   items 0-1999: a plain O_DIRECT probe of the disk; `ce-run` from cold storage resident (again with
            CETRT_DEVICE=torch: the device's A/B) and at 1/3 and 1/6 of the weights; the harness method loading
            the same-size weights from cold disk, then again resident; the FP16 matrix rate; useful FLOP; a
            profile of one batch.
  whole7b   llama7b's end-to-end runs and harness on the whole validation set (every item unless --limit), no
            profiles; --parts splits it over calls on one machine, the parts kept in <work> between them.
  device7b  the GPU buffers' A/B alone on the prep7b engines: resident ce-run, cuda-bindings and torch
            alternating, two rounds.
  stream7b  ONNX Runtime's stream A/B on the prep7b engines: its own stream synchronised per run
            (CETRT_SHARED_STREAM=0) against the runner's compute stream without a sync per run (CETRT_SHARED_STREAM=1,
            the default since 2026-12-03), resident, two rounds; then the shared stream at 1/3 of the weights.
  prep30b   issue 17: a LLaMA-30B-shaped random model as engines (bench/random_engines.py: N layers per engine as
            calib chose it from the per-call cost measured here, unless --layers-per-engine; about 12 layers of
            distinct weight files so it fits the disk) and its calib.json, measured here by the calibration stage
            (for ce-run's schedule and ce-predict's rates).
  llama30b  `ce-run` from cold storage, resident (--limit: items, default all); llama30b_third: the same under a
            memory budget of 1/3 of the weights (a separate call); harness30b: the harness method on a random
            LlamaForCausalLM of the same shape built on the GPU, weights resident (--limit, default 500 items), its
            tokens and seconds (gpu_combine.py scales them to all items by token count). Each records the matrix rate.
  profile30b  bench/profile_block.py on the 30B engines at 2,048 and 8,192 tokens per batch.
  switchab  the GIL hand-over A/B on the prep7b engines: ce-run with its 0.5 ms hand-over against Python's 5 ms
            (CETRT_SWITCH_INTERVAL_MS=5), resident, alternating, --rounds rounds.
  readlong  the disk over as many bytes as a streamed run reads: the short probe, then the prep7b engines' layer
            files once per pass, --rounds passes.
  pinab     the page-locked buffers A/B on the prep7b engines: each next read's buffer made beside the read under way
            (the default) against made as its read starts (CETRT_PINNED_AHEAD=0), resident, alternating, --rounds.
  mergeab   calib's merge rule: 7B-shaped random layers as 1- and 2-layer engines, the layers' synchronised compute
            (bench/run_blocks.py) at 16,384 tokens a batch, alternating, --rounds rounds.
  sustained the FP16 matmul rate over --seconds of back-to-back matmuls, by tenths, with the GPU's clocks (every
            ce-run records its clocks too: bench/gpu_clocks.py).
  lengthab  the padding A/B on the prep7b engines: resident ce-run with rows padded to multiples of 32 (the default
            before 2026-12-03, `--length-multiple 32`) against the default (8), alternating, --rounds rounds.
  startab   the start-up A/B: ce-run preparing the device and engine types beside tokenizing (the default) against
            the old order (CETRT_PREPARE_BESIDE=0), alternating rounds, on the smollm2 step's engines or SmolLM2-shaped
            random ones made here.
  orderab   the run order's A/B on the prep7b engines, before any probe: resident and 1/3 of the weights
            alternating, --rounds rounds; the short probe after them (the llama7b step's first run has always read
            slowest).
  loadab    the resident-loading A/B on the prep7b engines: reading before the preparation is done and loading
            each engine as it arrives (the default since 2026-12-04) against the order and pace before
            (CETRT_LOAD_AS_READ=0), resident, alternating, --rounds rounds.
  fusionab  the ORT CUDA rewrites one block at a time (bench/attention_ab.py): the export's graph, attention fused,
            and the build's graph (attention and residual adds into norms fused), on SmolLM2's 6-layer block at
            16,384 and 4,096 tokens a batch, a 7B layer at 8,192 and a 30B layer at 4,096 (calib's choices).
  The 30B steps take --shape/--layers/--target, so `--shape smollm2-135m --layers 2 --target cpu` tests them here.
Each step writes <step>.json under --out (machine, versions, commands); `combine` (here, not on the device)
writes bench/results/gpu_engines.json and bench/results/gpu_end_to_end_7b.json from them.
Usage: python3 bench/gpu_speed.py smollm2 --dataset .devdata/hellaswag_val.jsonl --work /tmp/gpu --out $OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_bench import drop_page_cache, matmul_tflops  # noqa: E402
from gpu_clocks import GpuClocks  # noqa: E402

BIN = Path(sys.executable).parent
TORCH_DEVICE = {"CETRT_DEVICE": "torch"}  # the GPU buffers through torch, as before 2026-12-02: the A/B baseline
COMMANDS: list[str] = []


def run(args: list, env: dict | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """A command as a user runs it, timed from the outside; its line (with the environment it adds) goes to the
    result's commands."""
    COMMANDS.append(" ".join([*(f"{k}={v}" for k, v in (env or {}).items()), *(str(a) for a in args)]))
    start = time.perf_counter()
    done = subprocess.run([str(a) for a in args], env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if check and done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {COMMANDS[-1]}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done


def machine() -> dict:
    import torch

    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:  # no NVIDIA driver: the 30B steps tested on a CPU machine
        gpu = None
    import onnxruntime

    return {"gpu": gpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "providers": onnxruntime.get_available_providers(), "python": platform.python_version()}}


def ce(command: str, *args) -> list:
    return [BIN / command, *args]


def cetrt_run(engines: Path, dataset: str, out: Path, limit: int | None, budget: str | None = None,
              extra: tuple = (), cache: bool = False, env: dict | None = None) -> dict:
    """`ce-run` from cold storage (page cache dropped), timed from the outside; its results.json inside."""
    dropped = drop_page_cache()
    args = ["--engines", engines, "--dataset", dataset, "--json", out, "--quiet", *extra]
    args += ["--limit", str(limit)] if limit else []
    args += ["--memory-budget", budget] if budget else []
    with GpuClocks() as clocks:
        seconds, done = run(ce("ce-run", *args), env={**({} if cache else {"CETRT_NO_CACHE": "1"}), **(env or {})})
    data = json.loads(out.read_text())
    data.pop("items")
    return {"end_to_end_s": round(seconds, 3), "page_cache_dropped": dropped, "results": data,
            "gpu_clocks": clocks.summary(), "printed": done.stdout[-2500:]}


def harness_run(model: Path, dataset: str, out: Path, limit: int | None, dtype: str = "float16", rounds: int = 2,
                scores: Path | None = None) -> dict:
    dropped = drop_page_cache()
    args = [sys.executable, ROOT / "bench" / "hf_harness.py", "--model", model, "--dataset", dataset, "--json", out,
            "--dtype", dtype, "--rounds", str(rounds)]
    args += ["--limit", str(limit)] if limit else []
    args += ["--scores", scores] if scores else []
    seconds, _ = run(args)  # the whole process, timed from outside: the harness's own clocks are in its JSON
    return {"process_s": round(seconds, 3), "page_cache_dropped": dropped, **json.loads(out.read_text())}


def prepare_smollm2(work: Path, dataset: str, dtypes: tuple = ("float16", "float32")) -> dict:
    """SmolLM2's engines as `make engines TARGET=cuda` makes them (the CLI defaults), and its HF weights in `dtypes`
    (FP32 only for the reference run: not where an earlier step's reference is reused)."""
    onnx_dir, engines = work / "onnx" / "smollm2", work / "engines" / "smollm2"
    timings, calib = {}, None
    if not (engines / "manifest.json").is_file():
        timings["export_s"], _ = run(ce("ce-export", "--model", "smollm2-135m", "--out", onnx_dir, "--dtype", "float16"))
        timings["calib_s"], calib = run(ce("ce-calib", "--onnx", onnx_dir, "--target", "cuda", "--dataset", dataset,
                                           "--quiet"))
        timings["build_s"], _ = run(ce("ce-build", "--onnx", onnx_dir, "--out", engines, "--target", "cuda"))
    from cetrt.export.loading import load_model

    for dtype in dtypes:
        loaded = load_model("smollm2-135m", dtype=dtype)
        model = loaded.model
        model.hf_quantizer = None  # dequantized from the GGUF at load: plain tensors, saved as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work / "hf" / f"smollm2-{dtype}")
        loaded.tokenizer.save_pretrained(work / "hf" / f"smollm2-{dtype}")
    return {"timings": {k: round(v, 1) for k, v in timings.items()},
            "calib_printed": calib.stdout[-2000:] if calib else None,
            "calib": json.loads((engines / "calib.json").read_text())}


def step_prep7b(args) -> dict:
    """The LLaMA-7B shape: random engines (bench/random_engines.py) with calib.json measured here, as
    `make engines TARGET=cuda` leaves them (without it a run takes default batch sizes and does not size its first
    resident chunk to hide the reads: the 7B resident run of 2026-12-02 waited 6.8 s on storage), and HF
    safetensors of the same shape."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    work = args.work
    seconds, made = run([sys.executable, ROOT / "bench" / "random_engines.py", "--out", work / "engines" / "llama7b",
                         "--shape", "llama-7b", "--target", "cuda", "--calib-dataset", args.dataset,
                         "--calib-items", str(args.calib_items)])
    tokenizer = AutoTokenizer.from_pretrained(work / "engines" / "llama7b" / "tokenizer")
    sys.path.insert(0, str(ROOT / "bench"))
    from random_engines import hf_config

    start = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM(hf_config("llama-7b", None, len(tokenizer))).to(torch.float16)
    model.save_pretrained(work / "hf" / "llama7b")
    tokenizer.save_pretrained(work / "hf" / "llama7b")
    return {"random_engines_s": round(seconds, 1), "random_engines": made.stdout[-500:],
            "hf_safetensors_s": round(time.perf_counter() - start, 1)}


def step_smollm2(args) -> dict:
    work = args.work
    prepared = prepare_smollm2(work, args.dataset, ("float16",) if args.reference_from else ("float16", "float32"))
    engines = work / "engines" / "smollm2"
    cetrt = cetrt_run(engines, args.dataset, work / "smollm2_cetrt.json", args.limit)
    extra = {}
    if not args.no_ab:
        extra["cetrt_tokenization_cached"] = cetrt_run(engines, args.dataset, work / "smollm2_cetrt_cached.json",
                                                       args.limit, cache=True)
        extra["cetrt_torch_device"] = cetrt_run(engines, args.dataset, work / "smollm2_cetrt_torch.json", args.limit,
                                                env=TORCH_DEVICE)
    harness = harness_run(work / "hf" / "smollm2-float16", args.dataset, work / "smollm2_hf16.json", args.limit,
                          rounds=1)
    if args.reference_from:  # the HF FP32 run of an earlier step file: same model, items and harness code
        reference = {**json.loads(args.reference_from.read_text())["reference_fp32"], "reused_from": str(args.reference_from)}
    else:
        reference = harness_run(work / "hf" / "smollm2-float32", args.dataset, work / "smollm2_hf32.json", args.limit,
                                dtype="float32", rounds=1)
    for block in ("layers", "head"):
        run([sys.executable, ROOT / "bench" / "profile_block.py", "--engines", engines, "--dataset", args.dataset,
             "--block", block, "--json", work / f"smollm2_profile_{block}.json"])
    # where the compute goes, block by block, the device synchronised after each block (a warm second pass too)
    limit = ["--limit", str(args.limit)] if args.limit else []
    run([sys.executable, ROOT / "bench" / "run_blocks.py", "--engines", engines, "--dataset", args.dataset, *limit,
         "--passes", "2", "--json", work / "smollm2_blocks.json"], env={"CETRT_NO_CACHE": "1"})
    ref = reference["first_round"]
    return {"prepared": prepared, "cetrt": cetrt, **extra, "harness_fp16": harness,
            "reference_fp32": reference, "profile": json.loads((work / "smollm2_profile_layers.json").read_text()),
            "profile_head": json.loads((work / "smollm2_profile_head.json").read_text()),
            "blocks_synchronised": json.loads((work / "smollm2_blocks.json").read_text()),
            "acc_diff_points_vs_fp32": round(100 * (cetrt["results"]["acc"] - ref["acc"]), 3),
            "acc_norm_diff_points_vs_fp32": round(100 * (cetrt["results"]["acc_norm"] - ref["acc_norm"]), 3),
            "harness_over_cetrt": round(harness["end_to_end_s"] / cetrt["end_to_end_s"], 3)}


def engines_calib(engines: Path) -> dict | None:
    """The calib.json beside the engines, as measured on this machine (None where the build had none): what
    gpu_combine.py's ce-predict for the step's runs reads."""
    path = engines / "calib.json"
    return json.loads(path.read_text()) if path.is_file() else None


def layer_files(engines: Path) -> list[Path]:
    """The layer blocks' files the runs read: what the plain probe reads too."""
    from cetrt.formats.manifest import read_manifest

    return [engines / b.files[0].path for b in read_manifest(engines).blocks if b.spec.kind == "layers"]


PROBE_CONFIGS = [(size << 20, readers) for size in (4, 16, 64) for readers in (1, 4, 8)]


def probe_read(paths: list[Path], total: int = 3 << 30, configs: list = PROBE_CONFIGS) -> list[dict]:
    """A plain O_DIRECT reader, independent of cetrt's: request sizes x readers, each over fresh files, `total`
    bytes shared among the configurations."""
    results = []
    files = itertools.cycle(paths)
    for size, readers in configs:
        budget, jobs, taken = total // len(configs), [], 0
        while taken < budget:
            path = next(files)
            n = path.stat().st_size
            jobs += [(path, off, min(size, n - off)) for off in range(0, n, size)]
            taken += n
        lock, done, local = threading.Lock(), [0], threading.local()

        def read(job, size=size):
            import mmap

            path, off, length = job
            if getattr(local, "size", None) != size:
                local.buf, local.size = mmap.mmap(-1, size), size  # one aligned buffer per reader thread
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                got = os.preadv(fd, [memoryview(local.buf)[: -(-length // 4096) * 4096]], off)
                with lock:
                    done[0] += min(got, length)
            finally:
                os.close(fd)

        start = time.perf_counter()
        with ThreadPoolExecutor(readers) as pool:
            list(pool.map(read, jobs))
        seconds = time.perf_counter() - start
        results.append({"request_mib": size >> 20, "readers": readers, "bytes": done[0],
                        "gb_per_s": round(done[0] / seconds / 1e9, 3)})
    return results


def probe_pass(files: list[Path]) -> dict:
    """Every file read once at the runs' request size and depth (16 MiB x 4): the rate of a pass over the weights,
    where a short probe may see the disk's burst rate."""
    return probe_read(files, total=sum(p.stat().st_size for p in files), configs=[(16 << 20, 4)])[0]


def step_probes(files: list[Path]) -> dict:
    """The short probe's nine configurations, then, page cache dropped, one pass (`probe_run_bytes`)."""
    probe = probe_read(files)
    drop_page_cache()
    return {"probe": probe, "probe_run_bytes": [probe_pass(files)]}


def budget_run(engines: Path, args, out: Path, budget: str | None) -> dict:
    """`cetrt_run` under `budget`; where ce-run refuses it (calib's engines can be too large for a budget), its
    words instead."""
    try:
        return cetrt_run(engines, args.dataset, out, args.limit, budget=budget)
    except SystemExit as refused:
        return {"refused": str(refused)[-600:]}


def step_llama7b(args) -> dict:
    from cetrt.formats.manifest import read_manifest

    work = args.work
    engines = work / "engines" / "llama7b"
    manifest = read_manifest(engines)
    weights = manifest.engine_bytes
    files = layer_files(engines)
    probes = step_probes(files)
    time.sleep(args.settle_s)  # the first run of a step has always prepared and read slowest (see orderab)
    runs = {"resident": cetrt_run(engines, args.dataset, work / "7b_resident.json", args.limit),
            "resident_torch_device": cetrt_run(engines, args.dataset, work / "7b_resident_torch.json", args.limit,
                                               env=TORCH_DEVICE)}
    for name, divisor in (("1/3", 3), ("1/6", 6)):
        runs[name] = budget_run(engines, args, work / f"7b_{divisor}.json", str(weights // divisor))
    harness = harness_run(work / "hf" / "llama7b", args.dataset, work / "7b_hf.json", args.limit, rounds=2)
    rate = matmul_tflops()
    _, _ = run([sys.executable, ROOT / "bench" / "profile_block.py", "--engines", engines, "--dataset", args.dataset,
                "--json", work / "7b_profile.json"])
    _, _ = run([sys.executable, ROOT / "bench" / "profile_block.py", "--engines", engines, "--dataset", args.dataset,
                "--block", "head", "--json", work / "7b_profile_head.json"])
    # the engines' own compute: the device synchronised after each block's runs, reads outside the blocks' time
    # (ce-run's compute timer is the host's view of a shared stream, beside reads and loads); two passes: the
    # first as a user's process meets it, the second warm, as the harness's resident round is timed
    limit = ["--limit", str(args.limit)] if args.limit else []
    _, _ = run([sys.executable, ROOT / "bench" / "run_blocks.py", "--engines", engines, "--dataset", args.dataset,
                *limit, "--passes", "2", "--json", work / "7b_blocks.json"], env={"CETRT_NO_CACHE": "1"})
    return {"weights_bytes": weights, **probes, "runs": runs,
            "blocks_synchronised": json.loads((work / "7b_blocks.json").read_text()), "harness": harness,
            "matmul_tflops": rate, "profile": json.loads((work / "7b_profile.json").read_text()),
            "profile_head": json.loads((work / "7b_profile_head.json").read_text()),
            "calib": engines_calib(engines)}


WHOLE_PARTS = ("probe", "resident", "1/3", "1/6", "harness")


def step_whole7b(args) -> dict:
    """Issue 12's benchmark on the whole validation set, the product's job (llama7b scores items 0-1999, where the
    process's fixed costs weigh on a 6.6 s floor): the probes, `ce-run` from cold storage resident and at 1/3 and 1/6
    of the weights, the harness loading the same-size weights from cold disk and then again resident. --parts runs
    some of them, so that the step fits a call's 600 s as two calls on one machine; each part is kept in
    <work>/whole7b.json as it finishes and a later call adds to it (what a call returns holds every part so far)."""
    from cetrt.formats.manifest import read_manifest

    work = args.work
    engines = work / "engines" / "llama7b"
    weights = read_manifest(engines).engine_bytes
    kept_path = work / "whole7b.json"
    kept = json.loads(kept_path.read_text()) if kept_path.is_file() else {"runs": {}, "calls": []}
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(WHOLE_PARTS))
    if unknown:
        raise SystemExit(f"--parts: {', '.join(unknown)} unknown; take from {', '.join(WHOLE_PARTS)}")
    kept["calls"].append({"command": " ".join(sys.argv), "parts": parts, "commands": COMMANDS})
    for part in parts:
        if part == "probe":
            kept.update(step_probes(layer_files(engines)))
            time.sleep(args.settle_s)
        elif part == "harness":
            kept["harness"] = harness_run(work / "hf" / "llama7b", args.dataset, work / "whole_hf.json", args.limit,
                                          rounds=2)
        else:
            divisor = {"resident": 1, "1/3": 3, "1/6": 6}[part]
            kept["runs"][part] = budget_run(engines, args, work / f"whole_{divisor}.json",
                                            str(weights // divisor) if divisor > 1 else None)
        kept_path.write_text(json.dumps(kept, default=str))
    return {"weights_bytes": weights, **kept, "calib": engines_calib(engines)}


def step_readlong(args) -> dict:
    """The disk's rate over as many bytes as a 1/6 run reads: the short probe (its best rate is what issue 12's
    reader target is judged against), then every layer file of the prep7b engines once per pass, 16 MiB x 4 in
    flight, --rounds passes, each pass's rate (whole7b's 1/6 run read ten passes)."""
    files = layer_files(args.work / "engines" / "llama7b")
    short = probe_read(files)
    passes = [probe_pass(files) for _ in range(args.rounds)]
    total = sum(p["bytes"] for p in passes)
    seconds = sum(p["bytes"] / (p["gb_per_s"] * 1e9) for p in passes)
    return {"probe": short, "probe_best_gb_per_s": max(p["gb_per_s"] for p in short), "passes": passes,
            "passes_bytes": total, "passes_gb_per_s": round(total / seconds / 1e9, 3)}


def step_device7b(args) -> dict:
    """The GPU buffers' A/B alone: resident `ce-run`s of the prep7b engines, cuda-bindings and torch alternating,
    two rounds, page cache dropped before each."""
    work = args.work
    engines = work / "engines" / "llama7b"
    rounds = []
    for n in range(2):
        rounds.append({"cuda_bindings": cetrt_run(engines, args.dataset, work / f"7b_ab_ours_{n}.json", args.limit),
                       "torch": cetrt_run(engines, args.dataset, work / f"7b_ab_torch_{n}.json", args.limit,
                                          env=TORCH_DEVICE)})
    return {"rounds": rounds}


SHARED_STREAM = {"CETRT_SHARED_STREAM": "1"}  # ONNX Runtime on the runner's compute stream, no sync per run
OWN_STREAM = {"CETRT_SHARED_STREAM": "0"}  # ONNX Runtime on its own stream, synchronised after every run


def step_stream7b(args) -> dict:
    """ONNX Runtime's stream A/B on the prep7b engines: resident `ce-run`s with ORT on its own stream, synchronised
    after every run (CETRT_SHARED_STREAM=0), and on the runner's compute stream without a sync per run (=1),
    alternating, two rounds, page cache dropped before each; then the shared stream at 1/3 of the weights (streamed:
    weights freed and re-read while runs are queued). A failing run is recorded with its words, not raised."""
    from cetrt.formats.manifest import read_manifest

    work = args.work
    engines = work / "engines" / "llama7b"

    def attempt(name: str, env: dict | None, budget: str | None = None) -> dict:
        try:
            return cetrt_run(engines, args.dataset, work / f"7b_stream_{name}.json", args.limit, budget=budget, env=env)
        except SystemExit as failed:
            return {"failed": str(failed)[-1500:]}

    rounds = [{"own_stream": attempt(f"own_{n}", OWN_STREAM), "shared_stream": attempt(f"shared_{n}", SHARED_STREAM)}
              for n in range(2)]
    third = attempt("shared_third", SHARED_STREAM, budget=str(read_manifest(engines).engine_bytes // 3))
    differences = [score_difference(work / "7b_stream_own_0.json", work / f"7b_stream_{name}.json")
                   for name in ("shared_0", "shared_1", "shared_third") if (work / f"7b_stream_{name}.json").is_file()]
    ran = all("failed" not in r for pair in rounds for r in pair.values()) and "failed" not in third
    median = {side: statistics.median(r[side]["end_to_end_s"] for r in rounds) for side in ("own_stream", "shared_stream")
              } if ran else None
    same = ran and len(differences) == 3 and max(differences) < 1e-2
    return {"rounds": rounds, "shared_stream_third_budget": third, "max_score_difference_vs_own_stream": differences,
            "median_end_to_end_s": median, "shared_stream_wins": bool(same and median["shared_stream"] < median["own_stream"])}


def alternate(engines: Path, args, prefix: str, sides: dict[str, dict]) -> dict[str, list]:
    """--rounds rounds of one `ce-run` per side (its keyword arguments to cetrt_run: env, extra), alternating, each
    writing <work>/<prefix>_<side>.json; the runs by side."""
    runs: dict[str, list] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, given in sides.items():
            runs[name].append(cetrt_run(engines, args.dataset, args.work / f"{prefix}_{name}.json", args.limit,
                                        **given))
    return runs


def step_startab(args) -> dict:
    """The start-up A/B: `ce-run` making the device and the engine types ready beside tokenizing (the default since
    2026-12-03) against the old order (CETRT_PREPARE_BESIDE=0), alternating, --rounds rounds, page cache dropped and
    tokenizing not cached before each; on the smollm2 step's engines if --work has them, else on SmolLM2-shaped
    random engines made here with calib (bench/random_engines.py)."""
    work = args.work
    engines, made = work / "engines" / "smollm2", None
    if not (engines / "manifest.json").is_file():
        engines = work / "engines" / "smollm2_random"
        if not (engines / "manifest.json").is_file():
            seconds, done = run([sys.executable, ROOT / "bench" / "random_engines.py", "--out", engines, "--shape",
                                 "smollm2-135m", "--target", args.target, "--calib-dataset", args.dataset,
                                 "--calib-items", str(args.calib_items)])
            made = {"seconds": round(seconds, 1), "printed": done.stdout[-500:]}
    runs = alternate(engines, args, "start", {"serial": {"env": {"CETRT_PREPARE_BESIDE": "0"}}, "beside": {}})
    medians = {name: statistics.median(r["end_to_end_s"] for r in done) for name, done in runs.items()}
    return {"engines": str(engines), "random_engines": made, "runs": runs, "median_end_to_end_s": medians,
            "serial_over_beside": round(medians["serial"] / medians["beside"], 3),
            "max_score_difference_last_round": score_difference(work / "start_serial.json", work / "start_beside.json")}


def step_loadab(args) -> dict:
    """The resident-loading A/B: `ce-run` on the prep7b engines, resident, reading before the preparation is done
    and loading each engine as it arrives (the default since 2026-12-04) against the order and pace before
    (CETRT_LOAD_AS_READ=0), alternating, --rounds rounds, page cache dropped and tokenizing not cached before each."""
    work = args.work
    engines = work / "engines" / "llama7b"
    runs = alternate(engines, args, "load", {"executor_pace": {"env": {"CETRT_LOAD_AS_READ": "0"}}, "as_read": {}})
    medians = {name: statistics.median(r["end_to_end_s"] for r in done) for name, done in runs.items()}
    return {"engines": str(engines), "runs": runs, "median_end_to_end_s": medians,
            "executor_pace_over_as_read": round(medians["executor_pace"] / medians["as_read"], 3),
            "max_score_difference_last_round": score_difference(work / "load_executor_pace.json",
                                                                work / "load_as_read.json")}


def step_switchab(args) -> dict:
    """The GIL hand-over A/B: `ce-run` on the prep7b engines, resident, with the 0.5 ms hand-over it sets while its
    readers work (the default since 2026-12-04's second session, cetrt.storage.readers_first) against Python's
    5 ms (CETRT_SWITCH_INTERVAL_MS=5), alternating, --rounds rounds, page cache dropped before each: the reader's
    rate against the probe's (0.86x in that session's resident 7B run, 0.96x with the torch device's slower
    executor)."""
    work = args.work
    engines = work / "engines" / "llama7b"
    runs = alternate(engines, args, "switch", {"python_5ms": {"env": {"CETRT_SWITCH_INTERVAL_MS": "5"}},
                                               "readers_first": {}})
    medians = reader_medians(runs)
    return {"engines": str(engines), "runs": runs, "medians": medians, "probe": probe_read(layer_files(engines)),
            "python_5ms_over_readers_first": round(medians["python_5ms"]["end_to_end_s"]
                                                   / medians["readers_first"]["end_to_end_s"], 3),
            "max_score_difference_last_round": score_difference(work / "switch_python_5ms.json",
                                                                work / "switch_readers_first.json")}


def reader_medians(runs: dict[str, list]) -> dict[str, dict]:
    """Per side of an A/B: the medians of what a reader change moves (end to end, the read rate, the consumer's
    time blocked on storage, the reader's time getting buffers)."""
    picks = (("end_to_end_s", lambda r: r["end_to_end_s"]),
             ("read_gb_per_s", lambda r: r["results"]["streaming"]["read_bytes_per_s"] / 1e9),
             ("blocked_on_storage_s", lambda r: r["results"]["streaming"]["blocked_on_storage_s"]),
             ("reader_buffer_s", lambda r: r["results"]["streaming"]["reader_buffer_s"]))
    return {name: {key: statistics.median(pick(r) for r in done) for key, pick in picks} for name, done in runs.items()}


def step_pinab(args) -> dict:
    """The page-locked buffers A/B: `ce-run` on the prep7b engines, resident, with the next read's buffer made
    beside the read under way and the first two beside tokenizing (the default since 2026-12-05,
    cetrt.backends.cuda_device.PinnedPool.prepare) against each buffer made as its read starts
    (CETRT_PINNED_AHEAD=0), alternating, --rounds rounds, page cache dropped before each: 1.5-1.9 s of the 7B
    runs' reader went to getting buffers (`reader_buffer_s`) in 2026-12-04's third session."""
    work = args.work
    engines = work / "engines" / "llama7b"
    runs = alternate(engines, args, "pin", {"as_read_starts": {"env": {"CETRT_PINNED_AHEAD": "0"}}, "ahead": {}})
    medians = reader_medians(runs)
    return {"engines": str(engines), "runs": runs, "medians": medians,
            "host_buffers_last_round": {name: done[-1]["results"]["streaming"]["host_buffers"]
                                        for name, done in runs.items()},
            "as_read_starts_over_ahead": round(medians["as_read_starts"]["end_to_end_s"]
                                               / medians["ahead"]["end_to_end_s"], 3),
            "max_score_difference_last_round": score_difference(work / "pin_as_read_starts.json",
                                                                work / "pin_ahead.json")}


def step_orderab(args) -> dict:
    """Whether a run's place in the step moves its reads: in every llama7b step so far the first run (resident,
    right after the probes' 16 GB of reads) read slower and prepared slower than the runs after it. Here, on the
    prep7b engines and before any probe: resident and 1/3 of the weights alternating, --rounds rounds, page cache
    dropped before each; then the llama7b step's short probe. Each run's read rate, preparation and blocked time
    by position."""
    from cetrt.formats.manifest import read_manifest

    work = args.work
    engines = work / "engines" / "llama7b"
    third = str(read_manifest(engines).engine_bytes // 3)
    time.sleep(args.settle_s)
    runs = alternate(engines, args, "order", {"resident": {}, "third": {"budget": third}})
    order = []
    for n in range(args.rounds):
        for name in ("resident", "third"):
            results = runs[name][n]["results"]
            order.append({"run": name, "round": n, "end_to_end_s": runs[name][n]["end_to_end_s"],
                          "read_gb_per_s": round(results["streaming"]["read_bytes_per_s"] / 1e9, 3),
                          "prepared_s": results["phases"]["prepared_beside_tokenizing_s"],
                          "blocked_on_storage_s": results["streaming"]["blocked_on_storage_s"]})
    probe = probe_read(layer_files(engines))
    return {"engines": str(engines), "order": order, "medians": reader_medians(runs),
            "probe_after": probe, "probe_after_best_gb_per_s": max(p["gb_per_s"] for p in probe)}


def step_exitab(args) -> dict:
    """The exit A/B: resident `ce-run`s of the prep7b engines ending at once after their results are written (the
    default since 2026-12-05, cetrt.cli.run_main) against the interpreter's teardown (CETRT_QUICK_EXIT=0),
    alternating, --rounds rounds, page cache dropped before each: 0.9-1.0 s of the 7B runs of 2026-12-05's third
    session were after ce-run's timer (`after_run_s`)."""
    work = args.work
    engines = work / "engines" / "llama7b"
    runs = alternate(engines, args, "exit", {"teardown": {"env": {"CETRT_QUICK_EXIT": "0"}}, "quick": {}})
    outside = {name: [round(r["end_to_end_s"] - r["results"]["timings"]["total_s"]
                            - r["results"]["phases"]["process_age_at_start_s"], 3) for r in done]
               for name, done in runs.items()}
    medians = {name: {"end_to_end_s": statistics.median(r["end_to_end_s"] for r in done),
                      "after_run_s": statistics.median(outside[name])} for name, done in runs.items()}
    return {"engines": str(engines), "runs": runs, "after_run_s": outside, "medians": medians,
            "teardown_over_quick": round(medians["teardown"]["end_to_end_s"] / medians["quick"]["end_to_end_s"], 3),
            "max_score_difference_last_round": score_difference(work / "exit_teardown.json", work / "exit_quick.json")}


def step_anchorab(args) -> dict:
    """The head A/B on SmolLM2, after the smollm2 step in the same work folder (its export and engines): engines
    built with the head's anchored FP16 LogSoftmax (CETRT_HEAD_ANCHORED=1, cetrt/backends/ort_head.py) against the
    step's default engines, `ce-run` alternating, --rounds rounds, page cache dropped before each; the head's and
    layers' synchronised seconds of each (bench/run_blocks.py, warm second pass); accuracy of both against the HF
    FP32 reference of --reference-from, and the items whose predictions differ between the two."""
    work = args.work
    onnx_dir, engines = work / "onnx" / "smollm2", work / "engines" / "smollm2"
    anchored = work / "engines" / "smollm2_anchored"
    build_s, _ = run(ce("ce-build", "--onnx", onnx_dir, "--out", anchored, "--target", "cuda"),
                     env={"CETRT_HEAD_ANCHORED": "1"})
    from cetrt.formats.manifest import read_manifest

    fused = {name: [x.details.get("fused_anchored") for m in [read_manifest(e)] for x in (*m.blocks, *m.engine_types)]
             for name, e in (("default", engines), ("anchored", anchored))}
    assert any(fused["anchored"]) and not any(fused["default"]), fused
    sides = {"default": engines, "anchored": anchored}
    runs: dict[str, list] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            runs[name].append(cetrt_run(side, args.dataset, work / f"anchor_{name}.json", args.limit))
    blocks = {}
    for name, side in sides.items():
        limit = ["--limit", str(args.limit)] if args.limit else []
        run([sys.executable, ROOT / "bench" / "run_blocks.py", "--engines", side, "--dataset", args.dataset, *limit,
             "--passes", "2", "--json", work / f"anchor_blocks_{name}.json"], env={"CETRT_NO_CACHE": "1"})
        blocks[name] = json.loads((work / f"anchor_blocks_{name}.json").read_text())["passes"][-1]["wall_by_kind_s"]
    reference = json.loads(args.reference_from.read_text())["reference_fp32"]["first_round"]
    items = {name: json.loads((work / f"anchor_{name}.json").read_text())["items"] for name in sides}
    changed = {key: [a["ind"] for a, b in zip(items["default"], items["anchored"], strict=True) if a[key] != b[key]]
               for key in ("pred", "pred_norm")}
    accuracy = {name: {metric: round(100 * (done[-1]["results"][metric] - reference[metric]), 3)
                       for metric in ("acc", "acc_norm")} for name, done in runs.items()}
    medians = {name: {"end_to_end_s": statistics.median(r["end_to_end_s"] for r in done),
                      "compute_s": statistics.median(r["results"]["timings"]["compute_s"] for r in done)}
               for name, done in runs.items()}
    return {"engines": {name: str(side) for name, side in sides.items()}, "build_s": round(build_s, 1),
            "fused_anchored": fused, "runs": runs, "medians": medians, "blocks_synchronised_warm": blocks,
            "points_vs_fp32": accuracy, "reference_from": str(args.reference_from), "changed_items": changed,
            "default_over_anchored": round(medians["default"]["end_to_end_s"] / medians["anchored"]["end_to_end_s"], 3),
            "max_score_difference_last_round": score_difference(work / "anchor_default.json",
                                                                work / "anchor_anchored.json")}


FUSION_CASES = (("smollm2-135m", 6, (16384, 4096)), ("llama-7b", 1, (8192,)), ("llama-30b", 1, (4096,)))


def step_fusionab(args) -> dict:
    """The ORT CUDA rewrites per block (bench/attention_ab.py, one process a shape): the export's graph, attention
    fused (the build until 2026-12-05) and the build's graph since (residual adds fused into norms too), timed on
    the same batches; the shapes, blocks and batch sizes of the whole-run steps."""
    out = {}
    for shape, layers, sizes in FUSION_CASES:
        path = args.work / f"fusionab_{shape}.json"
        run([sys.executable, ROOT / "bench" / "attention_ab.py", "--shape", shape, "--layers", str(layers),
             "--dataset", args.dataset, "--target", args.target, "--sizes", *map(str, sizes), "--json", path])
        out[shape] = json.loads(path.read_text())
    return {"cases": out}


def step_mergeab(args) -> dict:
    """calib's merge rule on the 7B shape: LLaMA-7B-shaped random layers built as 1-layer and as 2-layer engines
    (bench/random_engines.py --layers-per-engine 1 / 2, --distinct-layers 8 to spare the disk: every block still
    read), each timed by bench/run_blocks.py with the device synchronised after each block (the engines' own
    compute, reads outside it) at 16,384 tokens a batch (calib's choice in both 2026-12-04 leases), alternating,
    --rounds rounds. calib chose 1 layer in one lease and 2 in the next on a 0.1 ms margin (0.71 ms a call against
    5% of a 12.14 ms layer), and the two leases' resident compute differed by half (3.76 s and 5.61 s): this says
    what the merge itself is worth on one machine."""
    work = args.work
    engines = {layers: work / "engines" / f"{args.merge_shape}_{layers}lpe" for layers in (1, 2)}
    built = {}
    for layers, out in engines.items():
        if not (out / "manifest.json").is_file():
            seconds, done = run([sys.executable, ROOT / "bench" / "random_engines.py", "--out", out, "--shape",
                                 args.merge_shape, "--target", args.target, "--layers-per-engine", str(layers),
                                 "--distinct-layers", "8"])
            built[layers] = {"seconds": round(seconds, 1), "printed": done.stdout[-300:]}
    limit = ["--limit", str(args.limit)] if args.limit else []
    tokens = args.tokens_per_batch or 16384
    rounds: dict[str, list] = {"1": [], "2": []}
    for round_index in range(args.rounds):
        for layers, engines_dir in engines.items():
            out = work / f"merge_{layers}lpe_{round_index}.json"
            run([sys.executable, ROOT / "bench" / "run_blocks.py", "--engines", engines_dir, "--dataset", args.dataset,
                 *limit, "--passes", "1", "--tokens-per-batch", str(tokens), "--json", out],
                env={"CETRT_NO_CACHE": "1"})
            one = json.loads(out.read_text())["passes"][0]
            rounds[str(layers)].append({"layers_wall_s": one["wall_by_kind_s"]["layers"],
                                        "wall_by_kind_s": one["wall_by_kind_s"], "acc": one["acc"],
                                        "compute_s": one["timings"]["compute_s"]})
    medians = {layers: statistics.median(r["layers_wall_s"] for r in done) for layers, done in rounds.items()}
    return {"shape": args.merge_shape, "tokens_per_batch": tokens, "built": built, "rounds": rounds,
            "median_layers_wall_s": medians,
            "one_layer_over_two_layer_engines": round(medians["1"] / medians["2"], 3)}


def step_lengthab(args) -> dict:
    """The padding A/B: resident `ce-run`s of the prep7b engines with rows padded to multiples of 32 (the default
    before 2026-12-03) and with the default (8), alternating, --rounds rounds, page cache dropped before each."""
    work = args.work
    engines = work / "engines" / "llama7b"
    runs = alternate(engines, args, "length", {"multiple_32": {"extra": ("--length-multiple", "32")}, "default_8": {}})
    median = {name: {"end_to_end_s": statistics.median(r["end_to_end_s"] for r in done),
                     "compute_s": statistics.median(r["results"]["timings"]["compute_s"] for r in done)}
              for name, done in runs.items()}
    padded = {name: done[-1]["results"]["padded_tokens"] for name, done in runs.items()}
    ratio = {key: round(median["multiple_32"][key] / median["default_8"][key], 3)
             for key in ("compute_s", "end_to_end_s")}
    return {"runs": runs, "median": median, "padded_tokens": padded,
            "compute_32_over_8": ratio["compute_s"], "end_to_end_32_over_8": ratio["end_to_end_s"],
            "max_score_difference_last_round": score_difference(work / "length_multiple_32.json",
                                                                work / "length_default_8.json")}


def score_difference(one: Path, other: Path) -> float:
    """The largest difference between two results files' per-item log-likelihoods (same items, same order)."""
    a, b = (json.loads(p.read_text())["items"] for p in (one, other))
    return max(abs(x - y) for i, j in zip(a, b, strict=True) for x, y in zip(i["scores"], j["scores"], strict=True))


def engines_30b(args) -> Path:
    return args.work / "engines" / "llama30b"


DISTINCT_LAYERS = 12  # layers' worth of distinct layer weight files (12.8 GB at the 30B shape)


def step_prep30b(args) -> dict:
    """Random engines of the shape (N layers per engine: calib's choice unless given), about DISTINCT_LAYERS layers
    of distinct weight files, and calib.json beside them."""
    from cetrt.families import presets

    spec = presets()[args.shape]
    layers = args.layers or spec.num_layers
    vocab = 49152  # SmolLM2's tokenizer sets the vocabulary (random_engines.py)
    most = max(DISTINCT_LAYERS, args.layers_per_engine or 0, layers // 2)  # files never hold fewer than N layers
    expected = min(most, layers) * spec.layer_bytes("float16") + 2 * vocab * spec.hidden_size * 2  # + embed, head
    free = shutil.disk_usage(args.work).free
    scratch = spec.layer_bytes("float16") + 2 * vocab * spec.hidden_size * 2  # the export on the way
    if free < expected + scratch + (2 << 30):
        raise SystemExit(f"{args.work}: {free / 1e9:.1f} GB free, the engines need up to {expected / 1e9:.1f} GB and "
                         f"the export on the way {scratch / 1e9:.1f} GB: free the disk")
    command = [sys.executable, ROOT / "bench" / "random_engines.py", "--out", engines_30b(args), "--shape", args.shape,
               "--target", args.target, "--distinct-layers", str(DISTINCT_LAYERS), "--calib-dataset", args.dataset,
               "--calib-items", str(args.calib_items)]
    command += ["--layers-per-engine", str(args.layers_per_engine)] if args.layers_per_engine else []
    command += ["--layers", str(layers)] if args.layers else []
    seconds, made = run(command)
    engines = engines_30b(args)
    on_disk = sum(f.stat().st_size for f in engines.rglob("*") if f.is_file())
    from cetrt.formats.manifest import read_manifest

    options = read_manifest(engines).build_options
    return {"random_engines_s": round(seconds, 1), "random_engines": made.stdout[-1500:],
            "shape": args.shape, "layers": layers, "layers_per_engine": options["layers_per_engine"],
            "layers_per_engine_source": options["layers_per_engine_source"],
            "distinct_layer_files": options["distinct_layer_files"], "expected_weight_bytes_on_disk": expected, "engines_bytes_on_disk": on_disk,
            "disk_free_after_bytes": shutil.disk_usage(args.work).free,
            "calib": json.loads((engines / "calib.json").read_text())}


def matrix_rate(target: str) -> float | None:
    """The FP16 matmul rate (TFLOP/s) on a CUDA target; None on the CPU (nothing to compare with)."""
    return round(matmul_tflops(), 1) if target == "cuda" else None


def resident_budget(weights: int) -> str:
    """1.5x the weights (room for the chunk's activations), capped at 90% of this machine's memory (ce-run refuses
    a budget over MemTotal); the cuda target's default, 64 GiB, is below the 30B shape's weights."""
    from cetrt.options import machine_memory

    total = machine_memory()
    return str(int(min(1.5 * weights, 0.9 * total if total else 1.5 * weights)))


def step_llama30b(args, divisor: int | None = None) -> dict:
    """`ce-run` end to end from cold storage, resident (an explicit budget, resident_budget) or at 1/`divisor` of
    the weights."""
    from cetrt.formats.manifest import read_manifest

    engines = engines_30b(args)
    manifest = read_manifest(engines)
    weights = manifest.engine_bytes
    budget = str(weights // divisor) if divisor else args.resident_budget or resident_budget(weights)
    name = f"30b_{divisor}" if divisor else "30b_resident"
    rate = matrix_rate(args.target)
    (args.work / f"{name}.journal.jsonl").unlink(missing_ok=True)  # a timed run starts over, never resumes
    extra = ("--tokens-per-batch", str(args.tokens_per_batch)) if args.tokens_per_batch else ()
    result = cetrt_run(engines, args.dataset, args.work / f"{name}.json", args.limit, budget=budget, extra=extra)
    return {"weights_bytes": weights, "budget": budget, "tokens_per_batch_given": args.tokens_per_batch, "budget_fraction": f"1/{divisor}" if divisor else "resident",
            "model_id": manifest.model_id, "model_spec": manifest.model.to_json(),
            "layers_per_engine": manifest.build_options.get("layers_per_engine", 1),
            "distinct_layer_files": manifest.build_options.get("distinct_layer_files"),
            "items_run": result["results"]["n"], "run": result, "matmul_tflops": rate,
            "calib": engines_calib(engines)}


def sustained_matrix_rate(seconds: float = 40.0) -> dict:
    """The FP16 matmul rate over `seconds` of back-to-back 8,192-cube matmuls, in tenths, with the clocks: what
    the GPU sustains for minutes, against matrix_rate's 20 matmuls (a run of the 30B shape keeps it busy 200 s)."""
    import torch

    one = matmul_tflops(repeats=20)
    per_tenth = max(1, int(seconds / 10 * one * 1e12 / (2 * 8192 ** 3)))
    with GpuClocks() as clocks:
        rates = [round(matmul_tflops(repeats=per_tenth), 1) for _ in range(10)]
    torch.cuda.empty_cache()
    return {"first_20_matmuls_tflops": round(one, 1), "tflops_by_tenth": rates, "matmuls_per_tenth": per_tenth,
            "gpu_clocks": clocks.summary()}


def step_sustained(args) -> dict:
    return {"sustained_matmul": sustained_matrix_rate(args.seconds)}


def step_llama30b_third(args) -> dict:
    return step_llama30b(args, divisor=args.budget_divisor)


def step_profile30b(args) -> dict:
    """bench/profile_block.py on the 30B engines at 2,048 and 8,192 tokens per batch: kernels, gaps and CUDA
    runtime calls of one layer run at each size (calib measured 8,192 at twice 2,048's per-token time in one
    long-lived session)."""
    profiles = {}
    for size in (2048, 8192):
        out = args.work / f"30b_profile_{size}.json"
        run([sys.executable, ROOT / "bench" / "profile_block.py", "--engines", engines_30b(args), "--dataset",
             args.dataset, "--tokens-per-batch", str(size), "--json", out])
        profiles[str(size)] = json.loads(out.read_text())
    return {"profiles": profiles}


def step_harness30b(args) -> dict:
    """The harness method (bench/hf_baseline.py) on a random LlamaForCausalLM of the shape built on the device in
    FP16, weights resident: its scoring seconds and the tokens it ran (the tokenizer the engines carry, or where
    their folder is gone, to free the disk, the same SmolLM2 tokenizer from its package)."""
    import torch
    from hf_baseline import accuracy, harness_style_scores
    from random_engines import hf_config
    from random_llama import load_tokenizer_only
    from transformers import AutoTokenizer, LlamaForCausalLM

    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import encode_docs

    limit = args.limit or 500
    device = "cuda" if args.target == "cuda" else "cpu"
    carried = engines_30b(args) / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(carried) if carried.is_dir() else load_tokenizer_only()
    config = hf_config(args.shape, args.layers, len(tokenizer))
    config._attn_implementation = "eager"  # as bench/hf_harness.py loads it
    rate = matrix_rate(args.target)
    start = time.perf_counter()
    torch.set_default_dtype(torch.float16)  # built in FP16 on the device: a 30B model in FP32 would not fit
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    if device == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    encoded = encode_docs(tokenizer, load_docs(args.dataset, limit))
    tokenize_s = time.perf_counter() - start
    rounds = []
    for _ in range(2):  # the second round: every batch shape seen once already
        scores, stats = harness_style_scores(model, encoded, batch_size=64, device=device)
        rounds.append({**stats, **accuracy(encoded, scores)})
    return {"shape": args.shape, "layers": config.num_hidden_layers, "vocab": len(tokenizer), "items_run": len(encoded),
            "dtype": "float16", "device": device, "build_on_device_s": round(build_s, 1),
            "tokenize_s": round(tokenize_s, 2), "rounds": rounds, "matmul_tflops": rate,
            "parameters": sum(p.numel() for p in model.parameters())}


def step_smoke(args) -> dict:
    """The CUDA path on a tiny random LLaMA before any long run: cuda engines score like CPU engines, resident and
    streamed under a budget (fails fast, with the traceback, if they do not)."""
    import numpy as np

    os.environ["CETRT_HELLASWAG"] = args.dataset
    sys.path.insert(0, str(ROOT / "tests"))
    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.export.pipeline import ExportOptions, export_model
    from cetrt.formats.manifest import read_manifest
    from cetrt.runner.evaluate import RunOptions, evaluate

    from tiny_models import make_tiny_model

    work = args.work / "smoke"
    if not (work / "onnx" / "blocks.json").is_file():
        model = make_tiny_model(work / "model", "llama")
        export_model(ExportOptions(model=str(model), out_dir=work / "onnx", dtype="float16", layers_per_block=1))
    scores = {}
    for target in ("cpu", "cuda"):
        build_engines(BuildOptions(onnx_dir=work / "onnx", out_dir=work / target, target=target))
        scores[target] = evaluate(RunOptions(engines=work / target, dataset=args.dataset, limit=24, progress=False))
    budget = str(read_manifest(work / "cuda").engine_bytes // 2 + (1 << 20))
    streamed = evaluate(RunOptions(engines=work / "cuda", dataset=args.dataset, limit=24, progress=False,
                                   memory_budget=budget, tokens_per_batch=512))
    build_engines(BuildOptions(onnx_dir=work / "onnx", out_dir=work / "cuda-merged", target="cuda", layers_per_engine=2))
    merged = evaluate(RunOptions(engines=work / "cuda-merged", dataset=args.dataset, limit=24, progress=False))
    os.environ["CETRT_HEAD_ANCHORED"] = "1"  # the head's anchored FP16 form (a build input: built apart)
    try:
        build_engines(BuildOptions(onnx_dir=work / "onnx", out_dir=work / "cuda-anchored", target="cuda"))
    finally:
        del os.environ["CETRT_HEAD_ANCHORED"]
    anchored = evaluate(RunOptions(engines=work / "cuda-anchored", dataset=args.dataset, limit=24, progress=False))
    cpu, cuda, stream, fused, anchored = (np.array([i.scores for i in r.items])
                                          for r in (scores["cpu"], scores["cuda"], streamed, merged, anchored))
    result = {"max_diff_cuda_vs_cpu": float(np.abs(cuda - cpu).max()),
              "max_diff_anchored_head_vs_cpu": float(np.abs(anchored - cpu).max()),
              "max_diff_streamed_vs_resident": float(np.abs(stream - cuda).max()),
              "max_diff_merged_vs_one_layer_engines": float(np.abs(fused - cuda).max()),
              "streamed_plan": streamed.extra["streaming"]["plan"],
              **{key: {name: [t.details.get(key) for t in read_manifest(work / name).engine_types]
                       for name in ("cuda", "cuda-merged", "cuda-anchored")}
                 for key in ("fused_attention", "fused_norms", "fused_argmax", "fused_anchored")}}
    print(json.dumps(result), flush=True)
    assert result["max_diff_cuda_vs_cpu"] < 0.1 and result["max_diff_streamed_vs_resident"] < 1e-3, result
    assert result["max_diff_merged_vs_one_layer_engines"] < 1e-2, result
    # every layer's attention fused (engine types: embed, the layer types, head)
    assert result["fused_attention"] == {"cuda": [0, 1, 0], "cuda-merged": [0, 2, 1, 0],
                                         "cuda-anchored": [0, 1, 0]}, result
    # every residual add that feeds a norm fused into it: 2 a layer, less a block's last (its output)
    assert result["fused_norms"] == {"cuda": [0, 1, 0], "cuda-merged": [0, 3, 1, 0],
                                     "cuda-anchored": [0, 1, 0]}, result
    # the head's ArgMax reads the FP16 logits
    assert result["fused_argmax"] == {"cuda": [0, 0, 1], "cuda-merged": [0, 0, 0, 1],
                                      "cuda-anchored": [0, 0, 1]}, result
    assert result["fused_anchored"]["cuda-anchored"] == [0, 0, 1], result
    assert result["max_diff_anchored_head_vs_cpu"] < 0.1, result
    return result


STEPS = {"smoke": step_smoke, "smollm2": step_smollm2, "prep7b": step_prep7b, "llama7b": step_llama7b,
         "whole7b": step_whole7b,
         "loadab": step_loadab,
         "device7b": step_device7b, "stream7b": step_stream7b,
         "prep30b": step_prep30b, "llama30b": step_llama30b, "llama30b_third": step_llama30b_third,
         "harness30b": step_harness30b, "profile30b": step_profile30b, "startab": step_startab,
         "lengthab": step_lengthab, "sustained": step_sustained, "switchab": step_switchab, "pinab": step_pinab,
         "readlong": step_readlong,
         "orderab": step_orderab, "mergeab": step_mergeab, "exitab": step_exitab, "fusionab": step_fusionab, "anchorab": step_anchorab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="items (default all; harness30b: 500)")
    parser.add_argument("--shape", default="llama-30b", help="30B steps: a LLaMA preset")
    parser.add_argument("--layers", type=int, default=None, help="30B steps: decoder layers (default: the shape's)")
    parser.add_argument("--target", default="cuda", help="30B steps: cuda, or cpu to test them here")
    parser.add_argument("--layers-per-engine", type=int, default=None,
                        help="prep30b: decoder layers per engine (default: calib's choice)")
    parser.add_argument("--calib-items", type=int, default=400, help="prep30b, prep7b: items the calibration batches come from")
    parser.add_argument("--resident-budget", default=None, help="llama30b: the resident run's memory budget "
                        "(default: 1.5x the weights, at most 90%% of this machine's memory)")
    parser.add_argument("--tokens-per-batch", type=int, default=None,
                        help="llama30b, llama30b_third: ce-run's --tokens-per-batch (default: calib's choice)")
    parser.add_argument("--no-ab", action="store_true", help="smollm2: skip the cached-tokenizing and torch-device runs")
    parser.add_argument("--reference-from", type=Path, default=None, help="smollm2: take the HF FP32 reference from this "
                        "earlier smollm2.json instead of running it (same model, items and harness code)")
    parser.add_argument("--merge-shape", default="llama-7b", help="mergeab: the LLaMA preset (smollm2-135m to try it on CPU)")
    parser.add_argument("--seconds", type=float, default=40.0, help="sustained: seconds of back-to-back matmuls")
    parser.add_argument("--rounds", type=int, default=3, help="startab, lengthab, loadab: alternating rounds of each side")
    parser.add_argument("--parts", default=",".join(WHOLE_PARTS),
                        help=f"whole7b: which of {', '.join(WHOLE_PARTS)} this call runs (comma-separated)")
    parser.add_argument("--settle-s", type=float, default=0.0, help="llama7b, orderab, whole7b: seconds of rest "
                        "before the first measured run (a guess to test: the host's disk still busy with the prep "
                        "step's writes)")
    parser.add_argument("--budget-divisor", type=int, default=3, help="llama30b_third: the budget is the weights / this "
                        "(a tiny shape's head alone is more than 1/3 of it: 2 there)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = STEPS[args.step](args)
    record = {"step": args.step, "machine": machine(), "command": " ".join(sys.argv), "commands": COMMANDS,
              "seconds": round(time.perf_counter() - start, 1), "dataset": args.dataset, "limit": args.limit,
              "cetrt_environment": {k: v for k, v in os.environ.items() if k.startswith("CETRT_")},
              "settle_s": args.settle_s,
              **result}
    (args.out / f"{args.step}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps({"step": args.step, "seconds": record["seconds"]}))
    if args.step == "anchorab":
        shutil.rmtree(args.work / "onnx", ignore_errors=True)  # SmolLM2's engines are built: free the disk


if __name__ == "__main__":
    main()
