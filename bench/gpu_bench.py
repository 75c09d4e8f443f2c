"""GPU benchmarks (device machine): cetrt on ONNX Runtime CUDA against the harness's method on transformers.

Steps, each a separate command so every call fits the device's 10-minute limit; they share --work:
  real     SmolLM2-135M on all items: cetrt FP16 engines (ORT CUDA) vs harness-style HF FP16, and the HF FP32
           reference for accuracy.
  make7b   export a random-weight LLaMA-7B-shaped model (bench/random_llama.py), calibrate it on this GPU
           (measurements and schedule; no precision check on random weights), and build its CUDA engines both
           ways: weights inside (one engine per block) and weights as inputs (one engine per block type).
  run7b    the 7B shape on a fixed item slice: cetrt vs harness-style HF FP16, tokens/s, FLOP rate against
           the measured FP16 matmul rate.
  stream7b the 7B engines of each --layouts resident and under budgets of 1/3 and 1/6 of the weights, page
           cache dropped before each run (reads are O_DIRECT as well).
  calreal  SmolLM2-135M FP16: export, calibrate on this GPU (precision check included), build, all items.
Each step writes <step>.json under --out with the machine, versions and command.
Usage: python bench/gpu_bench.py real --dataset .devdata/hellaswag_val.jsonl --work /tmp/gpu --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from hf_baseline import accuracy, harness_style_scores  # noqa: E402


def machine() -> dict:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        gpu = None
    import onnxruntime

    return {"gpu": gpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "providers": onnxruntime.get_available_providers(), "python": platform.python_version()}}


def matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def export_and_build(model: str, onnx_dir: Path, engines: Path, layers_per_block: int) -> dict:
    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.export.pipeline import ExportOptions, export_model

    start = time.perf_counter()
    if not (onnx_dir / "blocks.json").is_file():
        export_model(ExportOptions(model=model, out_dir=onnx_dir, dtype="float16", layers_per_block=layers_per_block))
    export_s = time.perf_counter() - start
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines, target="cuda"))
    return {"export_s": round(export_s, 1), "build_s": round(time.perf_counter() - start - export_s, 1)}


TOKENS_PER_BATCH = {"value": 4096}


def run_cetrt(engines: Path, dataset: str, limit: int | None, budget: str | None = None):
    from cetrt.runner.evaluate import RunOptions, evaluate

    return evaluate(RunOptions(engines=engines, dataset=dataset, limit=limit, memory_budget=budget, progress=False,
                               tokens_per_batch=TOKENS_PER_BATCH["value"]), announce=print)


def summary(results) -> dict:
    data = results.to_json()
    data.pop("items")
    return data


def encoded_docs(engines: Path, dataset: str, limit: int | None):
    from cetrt.formats.manifest import read_manifest
    from cetrt.runner.evaluate import load_tokenizer
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import encode_docs

    return encode_docs(load_tokenizer(engines, read_manifest(engines)), load_docs(dataset, limit))


def step_real(args) -> dict:
    from cetrt.export.loading import load_model

    engines = args.work / "engines" / "smollm2-cuda"
    prep = export_and_build("smollm2-135m", args.work / "onnx" / "smollm2-fp16", engines, layers_per_block=6)
    ours = run_cetrt(engines, args.dataset, args.limit)
    encoded = encoded_docs(engines, args.dataset, args.limit)
    baselines = {}
    for dtype in ("float16", "float32"):
        model = load_model("smollm2-135m", dtype=dtype).model.to("cuda")
        scores, stats = harness_style_scores(model, encoded, batch_size=args.batch_size)
        baselines[dtype] = {**stats, **accuracy(encoded, scores), "scores": scores}
        del model
        torch.cuda.empty_cache()
    ours_scores = np.array([item.scores for item in ours.items])
    reference = baselines["float32"]
    return {
        "prepare": prep,
        "cetrt_fp16": summary(ours),
        "hf_fp16_harness_style": {k: v for k, v in baselines["float16"].items() if k != "scores"},
        "hf_fp32_reference": {k: v for k, v in reference.items() if k != "scores"},
        "acc_diff_points_vs_fp32": round(100 * (ours.metrics["acc"] - reference["acc"]), 3),
        "acc_norm_diff_points_vs_fp32": round(100 * (ours.metrics["acc_norm"] - reference["acc_norm"]), 3),
        "max_item_score_diff_vs_fp32": float(np.abs(ours_scores - reference["scores"]).max()),
        "hf_fp16_seconds_over_cetrt_latency": round(baselines["float16"]["seconds"] / ours.latency_s, 3),
    }


def engines_7b(args, layout: str) -> Path:
    return args.work / "engines" / f"llama7b-cuda-{layout}"


def step_make7b(args) -> dict:
    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.calib.stage import CalibOptions, calibrate

    onnx_dir = args.work / "onnx" / "llama7b"
    start = time.perf_counter()
    if not (onnx_dir / "blocks.json").is_file():
        subprocess.run([sys.executable, ROOT / "bench" / "random_llama.py", "--out", onnx_dir, "--layers", str(args.layers)],
                       check=True)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    calib = calibrate(CalibOptions(onnx_dir=onnx_dir, target=args.target, dataset=args.dataset, precision_items=0,
                                   progress=False), announce=print)
    calib_s = time.perf_counter() - start
    builds = {}
    for layout in args.layouts.split(","):
        start = time.perf_counter()
        manifest = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines_7b(args, layout), target=args.target,
                                              weights=layout))
        builds[layout] = {"build_s": round(time.perf_counter() - start, 1), "stored_bytes": manifest.engine_bytes,
                          "engines": len(manifest.engine_types) or len(manifest.blocks), "blocks": len(manifest.blocks)}
    return {"export_s": round(export_s, 1), "calib_s": round(calib_s, 1), "calib": calib.to_json(), "builds": builds}


def model_flop(spec, tokens: int, attended_pairs: int, scored: int) -> float:
    """Forward FLOP: 2 per weight per token in the layers, attention's QK^T and PV, the LM head per scored token."""
    from cetrt.spec import ModelSpec  # noqa: F401

    layer = 2 * spec.layer_params() * tokens + 4 * spec.num_heads * spec.head_dim * attended_pairs
    return spec.num_layers * layer + 2 * spec.hidden_size * spec.vocab_size * scored


def step_run7b(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from cetrt.formats.manifest import read_manifest

    engines = args.work / "engines" / "llama7b-cuda"
    manifest = read_manifest(engines)
    ours = run_cetrt(engines, args.dataset, args.limit)
    encoded = encoded_docs(engines, args.dataset, args.limit)
    spec = manifest.model
    config = LlamaConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                         num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                         num_key_value_heads=spec.num_kv_heads, vocab_size=spec.vocab_size,
                         max_position_embeddings=spec.max_positions, tie_word_embeddings=False)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.float16).eval()
    scores, stats = harness_style_scores(model, encoded, batch_size=args.batch_size)
    rate = matmul_tflops()
    # cetrt's useful work: packed tokens through the layers, attention over allowed pairs, head at scored slots
    packed = sum(len(e.context) + sum(len(c) - 1 for c in e.continuations) for e in encoded)
    pairs = sum(len(e.context) * (len(e.context) + 1) // 2
                + sum((len(c) - 1) * len(e.context) + (len(c) - 1) * len(c) // 2 for c in e.continuations) for e in encoded)
    scored = sum(len(c) for e in encoded for c in e.continuations)
    flop = model_flop(spec, packed, pairs, scored)
    return {
        "cetrt_fp16": summary(ours),
        "hf_fp16_harness_style": stats,
        "hf_fp16_seconds_over_cetrt_latency": round(stats["seconds"] / ours.latency_s, 3),
        "measured_fp16_matmul_tflops": round(rate, 1),
        "cetrt_useful_flop": flop,
        "cetrt_achieved_tflops": round(flop / ours.latency_s / 1e12, 1),
        "cetrt_fraction_of_matmul_rate": round(flop / ours.latency_s / 1e12 / rate, 3),
    }


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def step_stream7b(args) -> dict:
    from cetrt.formats.manifest import read_manifest

    layouts = {}
    for layout in args.layouts.split(","):
        engines = engines_7b(args, layout)
        weights = read_manifest(engines).engine_bytes
        runs = {}
        for name in args.budgets.split(","):
            budget = None if name == "resident" else str(weights // int(name.split("_")[-1]))
            dropped = drop_page_cache()
            result = run_cetrt(engines, args.dataset, args.limit, budget)
            runs[name] = {"page_cache_dropped": dropped, "latency_s": result.latency_s, "load_s": result.load_s,
                          "compute_s": result.compute_s, **result.extra["streaming"],
                          "acc": result.metrics["acc"], "acc_norm": result.metrics["acc_norm"]}
        if "resident" in runs:
            for run in runs.values():
                run["time_over_resident"] = round(run["latency_s"] / runs["resident"]["latency_s"], 3)
        layouts[layout] = {"weights_bytes": weights, "runs": runs}
    return {"layouts": layouts}


def step_calreal(args) -> dict:
    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.calib.stage import CalibOptions, calibrate
    from cetrt.export.pipeline import ExportOptions, export_model

    onnx_dir, engines = args.work / "onnx" / "smollm2-fp16-cal", args.work / "engines" / "smollm2-cuda-cal"
    start = time.perf_counter()
    export_model(ExportOptions(model="smollm2-135m", out_dir=onnx_dir, dtype="float16", layers_per_block=1))
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    calib = calibrate(CalibOptions(onnx_dir=onnx_dir, target=args.target, dataset=args.dataset, progress=False),
                      announce=print)
    calib_s = time.perf_counter() - start
    start = time.perf_counter()
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=engines, target=args.target, weights=args.layouts.split(",")[0]))
    build_s = time.perf_counter() - start
    drop_page_cache()
    ours = run_cetrt(engines, args.dataset, args.limit)
    return {"export_s": round(export_s, 1), "calib_s": round(calib_s, 1), "build_s": round(build_s, 1),
            "calib": calib.to_json(), "cetrt_fp16": summary(ours)}


STEPS = {"real": step_real, "make7b": step_make7b, "run7b": step_run7b, "stream7b": step_stream7b,
         "calreal": step_calreal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="default: calib.json's, else 4096")
    parser.add_argument("--target", default="cuda", help="cpu: a local smoke run of the steps' code")
    parser.add_argument("--layouts", default="inside,inputs", help="weights layouts to build and stream")
    parser.add_argument("--budgets", default="resident,budget_1_3,budget_1_6")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    TOKENS_PER_BATCH["value"] = args.tokens_per_batch
    result = STEPS[args.step](args)
    report = {"step": args.step, "tokens_per_batch_option": args.tokens_per_batch, "command": " ".join([sys.executable, *sys.argv]), "machine": machine(),
              "dataset": args.dataset, "limit": args.limit, "wall_s": round(time.perf_counter() - start, 1), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.step}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine",)}, indent=2, default=float)[:6000])


if __name__ == "__main__":
    main()
