"""How many head slots the batches hold per scored position, with rows of one padded length ordered by the positions
they score (cetrt.workload.packing.make_batches, since 2026-12-05) and, as before, by their real length.

The head computes its vocabulary matmul, log-softmax and argmax for every slot of a batch [rows, slots], slots
being the most positions any of its rows scores; a slot no row needs is work thrown away. Counted, not timed, with
SmolLM2's tokenizer (the one `make engines` installs) on all items and on items 0-1999, at the batch sizes calib
chose on the GPU (4,096, 8,192, 16,384 tokens).
Usage: python bench/head_slots.py --json bench/results/head_slots.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_all
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs

DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "hellaswag" / "hellaswag_val.jsonl"


def batches_by_real_length(rows, plan: ShapePlan) -> list[tuple[int, int, int]]:
    """(rows, padded length, slots) of each batch with rows in order of real length, as make_batches took them
    before 2026-12-05 (the baseline here and in tests/runner/test_packing.py): the same batch shapes."""
    ordered, batches, start = sorted(rows, key=lambda r: r.length), [], 0
    while start < len(ordered):
        length = plan.padded_length(ordered[start].length)
        group = [r for r in ordered[start: start + plan.batch_size(length)] if r.length <= length]
        batches.append((len(group), length, max(len(r.targets) for r in group)))
        start += len(group)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer, tokenizer_name = load_counting_tokenizer(None)
    encoded = encode_docs(tokenizer, load_docs(str(args.dataset), None))
    cases = []
    for limit in (2000, len(encoded)):
        rows = pack_all(encoded[:limit])
        scored = sum(len(r.targets) for r in rows)
        for tokens in (4096, 8192, 16384):
            plan = ShapePlan(tokens_per_batch=tokens)
            batches = make_batches(rows, plan)
            now = sum(len(b.rows) * b.slots for b in batches)
            before = sum(n * slots for n, _, slots in batches_by_real_length(rows, plan))
            cases.append({"items": limit, "tokens_per_batch": tokens, "batches": len(batches), "scored": scored,
                          "slots_by_scored_positions": now, "slots_by_real_length": before,
                          "slots_per_scored_now": round(now / scored, 3),
                          "slots_per_scored_before": round(before / scored, 3)})
            print(json.dumps(cases[-1]), flush=True)
    args.json.write_text(json.dumps({"benchmark": __doc__.splitlines()[0], "tokenizer": tokenizer_name,
                                     "dataset": str(args.dataset), "cases": cases, "command": " ".join(sys.argv),
                                     "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")


if __name__ == "__main__":
    main()
