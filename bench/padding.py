"""What padding costs: ce-run's batches of every HellaSwag item (and of items 0-1999, the 7B runs' slice) at several
length multiples and batch sizes, counted, not timed: padded tokens against real ones (every layer's GEMMs run
over the padded ones) and the attention's L x L work (sum of B x L^2), with the number of batches.

Rows are packed with SmolLM2's tokenizer, the random 7B and 30B engines' too. Writes JSON with the machine,
versions and command.
Usage: python bench/padding.py --dataset hellaswag_val.jsonl --json bench/results/padding_hellaswag.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs

MULTIPLES = (32, 16, 8)
TOKENS_PER_BATCH = (4096, 8192, 16384)
SLICES = {"all items": None, "items 0-1999": 2000}


def counts(rows, multiple: int, tokens_per_batch: int) -> dict:
    batches = make_batches(rows, ShapePlan(tokens_per_batch=tokens_per_batch, length_multiple=multiple))
    real = sum(b.tokens for b in batches)
    padded = sum(len(b.rows) * b.length for b in batches)
    return {"length_multiple": multiple, "tokens_per_batch": tokens_per_batch, "batches": len(batches),
            "tokens": real, "padded_tokens": padded, "padding_fraction": round(padded / real - 1, 4),
            "attention_b_l2": sum(len(b.rows) * b.length ** 2 for b in batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer, named = load_counting_tokenizer(None)
    encoded = encode_docs(tokenizer, load_docs(args.dataset))
    rows = [pack(i, e) for i, e in enumerate(encoded)]
    slices = {}
    for name, limit in SLICES.items():
        chosen = rows[:limit]
        table = [counts(chosen, m, t) for t in TOKENS_PER_BATCH for m in MULTIPLES]
        by = {(c["length_multiple"], c["tokens_per_batch"]): c for c in table}
        ratios = {str(t): round(by[8, t]["padded_tokens"] / by[32, t]["padded_tokens"], 4) for t in TOKENS_PER_BATCH}
        slices[name] = {"items": len(chosen), "table": table, "padded_tokens_8_over_32": ratios}
    import transformers

    result = {"benchmark": __doc__.splitlines()[0], "tokenizer": named, "slices": slices,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "transformers": transformers.__version__},
              "command": " ".join(["python", *sys.argv]),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: s["padded_tokens_8_over_32"] for name, s in slices.items()}))


if __name__ == "__main__":
    main()
