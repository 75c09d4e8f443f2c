"""Benchmark: cetrt on ONNX Runtime CPU against lm-evaluation-harness 0.4.13 itself, same items, one run.

Runs, one after the other on this machine: the harness (bench/harness/run_harness.sh, its own venv) and
`ce-run` on FP32 and FP16 engines of the same model, on the first N items. Builds the engines first if they
are missing (build time recorded, not compared). Writes one JSON: accuracies, their differences, the max
per-item score difference, times and the time ratios, with the machine, versions and command.

Usage: python bench/cpu_vs_harness.py --limit 1000 --out bench/results/cpu_smollm2_first1000.json
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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1), "platform": platform.platform()}


def versions() -> dict:
    import onnxruntime
    import torch
    import transformers

    import cetrt

    return {"cetrt": cetrt.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def ensure_engines(model: str, dtype: str, work: Path) -> tuple[Path, float | None]:
    engines = work / "engines" / f"{model}-{dtype}"
    if (engines / "manifest.json").is_file():
        return engines, None
    onnx = work / "onnx" / f"{model}-{dtype}"
    start = time.perf_counter()
    subprocess.run([BIN / "ce-export", "--model", model, "--out", onnx, "--dtype", dtype], check=True)
    subprocess.run([BIN / "ce-build", "--onnx", onnx, "--out", engines], check=True)
    return engines, time.perf_counter() - start


def run_cetrt(engines: Path, dataset: str, limit: int, out: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([BIN / "ce-run", "--engines", engines, "--dataset", dataset, "--limit", str(limit),
                    "--json", out, "--quiet"], check=True)
    data = json.loads(out.read_text())
    data["wall_s"] = time.perf_counter() - start  # the whole command: imports, tokenizer, everything
    return data


def compare(harness: dict, ours: dict) -> dict:
    reference = {item["ind"]: item for item in harness["items"]}
    diffs = [max(abs(a - b) for a, b in zip(item["scores"], reference[item["ind"]]["ll"])) for item in ours["items"]]
    same_pred = sum(item["pred"] == reference[item["ind"]]["pred"] for item in ours["items"])
    same_norm = sum(item["pred_norm"] == reference[item["ind"]]["pred_norm"] for item in ours["items"])
    return {
        "acc": ours["acc"], "acc_norm": ours["acc_norm"],
        "acc_stderr": ours["acc_stderr"], "acc_norm_stderr": ours["acc_norm_stderr"],
        "acc_diff_points": round(100 * (ours["acc"] - harness["acc"]), 3),
        "acc_norm_diff_points": round(100 * (ours["acc_norm"] - harness["acc_norm"]), 3),
        "max_item_score_diff": max(diffs),
        "items_same_pred": same_pred, "items_same_pred_norm": same_norm,
        "latency_s": ours["latency_s"], "wall_s": round(ours["wall_s"], 2), "timings": ours["timings"],
        "tokens": ours["tokens"], "tokens_per_s": ours["tokens_per_s"],
        "harness_wall_over_cetrt_wall": round(harness["wall_time_s"] / ours["wall_s"], 3),
        "harness_wall_over_cetrt_latency": round(harness["wall_time_s"] / ours["latency_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/data/hellaswag/hellaswag_val.jsonl"))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--harness-venv", default="/tmp/harness-venv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    builds = {dtype: ensure_engines(args.model, dtype, args.work) for dtype in ("float32", "float16")}
    harness_summary = args.work / "harness_summary.json"
    subprocess.run([ROOT / "bench/harness/run_harness.sh", args.dataset, str(args.limit), args.work / "harness",
                    harness_summary], check=True, env={**os.environ, "VENV": args.harness_venv})
    harness = json.loads(harness_summary.read_text())
    runs = {dtype: run_cetrt(engines, args.dataset, args.limit, args.work / f"cetrt_{dtype}.json")
            for dtype, (engines, _) in builds.items()}
    report = {
        "benchmark": "HellaSwag first N items: cetrt (ONNX Runtime CPU engines) vs lm-evaluation-harness 0.4.13 (HF, FP32, CPU)",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {**versions(), "harness": harness["versions"]},
        "model": args.model, "dataset": args.dataset, "n": args.limit,
        "harness": {k: harness[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "wall_time_s", "batch_size")},
        "cetrt": {dtype: compare(harness, run) for dtype, run in runs.items()},
        "engine_build_s": {dtype: b for dtype, (_, b) in builds.items()},
        "notes": "Harness wall time includes loading the GGUF model (dequantized to FP32) and tokenizing; cetrt "
                 "latency excludes tokenization, wall includes everything. Runs are sequential on the same machine.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("harness", "cetrt")}, indent=2))


if __name__ == "__main__":
    main()
