"""How full calib's timing batches are at each size: cut from its items as a run cuts them (calib before
2026-12-03, and the merge batches then) against `_typical_first` now (full batches, one per padded length).

Counts only, no timing: for each item count and size, the padded tokens of the batches calib times (after its
warm-up batch, up to its TOKENS_PER_SIZE) and their mean, and the four batches of the call-cost measurement.
SmolLM2's tokenizer (the random engines' own); rows padded to multiples of 8, and of 32 as before that change.
Usage: python bench/calib_batches.py --dataset hellaswag_val.jsonl --json bench/results/calib_batches.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.calib.schedule import (GPU_SIZES, MERGE_BATCHES, MERGE_TOKENS, SIZES, TOKENS_PER_SIZE, _timing_batches,
                                  _typical_first)
from cetrt.families import presets
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_docs
from cetrt.workload.shapes import ShapePlan


def cut_as_a_run(rows, size: int, multiple: int, exported) -> list:
    """calib's batches before 2026-12-03: the run's cut, middle of the length order first."""
    batches = make_batches(rows, ShapePlan(tokens_per_batch=size, length_multiple=multiple),
                           exported.model.max_positions)
    return batches[len(batches) // 2:] + batches[: len(batches) // 2]


def timed(batches: list) -> list[int]:
    """The padded tokens of the batches calib times at a size (its warm-up batch left out)."""
    return [batch.shape[0] * batch.shape[1] for batch in _timing_batches(batches)[1:]]


def summary(batches: list) -> dict:
    tokens = timed(batches)
    merge = [b.shape[0] * b.shape[1] for b in batches[:MERGE_BATCHES]]
    return {"timed_batches": len(tokens), "timed_mean_tokens": round(sum(tokens) / len(tokens)),
            "timed_padded_tokens": sum(tokens), "first_batches": merge}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--items", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer, named = load_counting_tokenizer(None)
    exported = SimpleNamespace(model=presets()["llama-7b"], dtype="float16")
    table = {}
    for items in args.items:
        rows = pack_docs(tokenizer, load_docs(args.dataset, items))
        for size in SIZES + GPU_SIZES:
            table[f"{items} items, {size} tokens"] = {
                "run_cut_multiple_32": summary(cut_as_a_run(rows, size, 32, exported)),
                "run_cut_multiple_8": summary(cut_as_a_run(rows, size, 8, exported)),
                "full_now": summary(_typical_first(rows, size, exported)),
            }
    result = {"benchmark": __doc__.splitlines()[0], "tokenizer": named, "merge_tokens": MERGE_TOKENS,
              "tokens_per_size": TOKENS_PER_SIZE, "table": table, "command": " ".join(["python", *sys.argv]),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for key, row in table.items():
        print(key, {k: (v["timed_mean_tokens"], v["first_batches"]) for k, v in row.items()})


if __name__ == "__main__":
    main()
