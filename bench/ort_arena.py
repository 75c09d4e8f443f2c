"""Benchmark: ONNX Runtime's per-session CPU memory arena on and off, on the real model's engines.

Runs the same items twice through `evaluate`, with the arena on and off (the product turns it off), and
records latency, compute time and the process's peak RSS increase.
Usage: python bench/ort_arena.py --engines engines/smollm2-135m --limit 100 --out bench/results/ort_arena_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cpu_vs_harness import machine, versions  # noqa: E402

from cetrt.backends import onnxruntime as ort_backend  # noqa: E402
from cetrt.runner.evaluate import RunOptions, evaluate  # noqa: E402


def run(engines: Path, dataset: str, limit: int, arena: bool) -> dict:
    product_options = ort_backend._session_options

    def with_arena(options):
        so = product_options(options)
        so.enable_cpu_mem_arena = arena
        return so

    ort_backend._session_options = with_arena
    try:
        result = evaluate(RunOptions(engines=engines, dataset=dataset, limit=limit, progress=False))
    finally:
        ort_backend._session_options = product_options
    return {"arena": arena, "latency_s": round(result.latency_s, 2), "compute_s": round(result.compute_s, 2),
            "peak_rss_increase_bytes": result.extra["streaming"]["peak_rss_increase_bytes"], "acc": result.metrics["acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/data/hellaswag/hellaswag_val.jsonl"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [run(args.engines, args.dataset, args.limit, arena) for arena in (True, False)]
    report = {"benchmark": "ORT per-session CPU arena on vs off", "command": " ".join([sys.executable, *sys.argv]),
              "machine": machine(), "versions": versions(), "engines": str(args.engines), "n": args.limit, "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
