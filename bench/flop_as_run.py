"""The FLOP of a GPU run's batches as they ran, padding included (calib/flop.py, as ce-predict counts them), over
its measured compute: the fraction of the datasheet peak that the Orin and V100 targets assume
(cetrt/spec.py, _H200_30B_FRACTION).

Reads a gpu_speed.py step file (its model spec, its run's batch size, compute and padded tokens), rebuilds the
run's batches (SmolLM2's tokenizer, the random engines' own) and checks that they pad to the run's tokens.
Usage: python bench/flop_as_run.py --step bench/results/gpu_steps/llama30b.json --dataset hellaswag_val.jsonl
       --json bench/results/flop_as_run_llama30b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cetrt.calib import flop
from cetrt.calib.presets import load_counting_tokenizer
from cetrt.spec import ModelSpec
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs

DATASHEET_PEAK = 989e12  # dense FP16 tensor FLOP/s of an H100 SXM or H200 (NVIDIA datasheet), as cetrt/spec.py states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--length-multiple", type=int, default=ShapePlan.length_multiple,
                        help="what the run padded rows to (32 before 2026-12-03)")
    args = parser.parse_args()
    step = json.loads(args.step.read_text())
    results = step["run"]["results"]
    spec = ModelSpec.from_json(step["model_spec"])
    tokens_per_batch = results["streaming"]["schedule"]["tokens_per_batch"]
    encoded = encode_docs(load_counting_tokenizer(None)[0], load_docs(args.dataset, step.get("limit")))
    plan = ShapePlan(tokens_per_batch=tokens_per_batch, length_multiple=args.length_multiple)
    batches = make_batches([pack(i, e) for i, e in enumerate(encoded)], plan)
    padded = sum(b.shape[0] * b.shape[1] for b in batches)
    if padded != results["padded_tokens"]:
        raise SystemExit(f"{args.step}: these batches pad to {padded:,} tokens, the run's to "
                         f"{results['padded_tokens']:,}: give the run's --length-multiple")
    as_run = flop.run_flop(spec, batches)
    compute_s = results["timings"]["compute_s"]
    result = {"benchmark": __doc__.splitlines()[0], "step": str(args.step), "tokens_per_batch": tokens_per_batch,
              "length_multiple": args.length_multiple, "padded_tokens": padded, "flop_as_run": as_run,
              "compute_s": compute_s,
              "tflops_as_run": round(as_run / compute_s / 1e12, 1), "datasheet_peak_flops": DATASHEET_PEAK,
              "fraction_of_datasheet_peak": round(as_run / compute_s / DATASHEET_PEAK, 4),
              "command": " ".join(["python", *sys.argv]), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("flop_as_run", "tflops_as_run", "fraction_of_datasheet_peak")}))


if __name__ == "__main__":
    main()
