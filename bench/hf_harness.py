"""The harness's method as a user runs it, end to end: load a Hugging Face model from disk to the GPU, tokenize the
items, score them (bench/hf_baseline.py), then score them again with the weights already resident.

Each part is timed on its own clock inside one process; the caller times the whole process too (interpreter and
imports included), as it times `ce-run`. `scored_once_s` is the clock from the start to the end of the first round
(the method end to end, scored once); `end_to_end_s` runs on through the resident rounds. Tokenization is the
harness's (cetrt's tested copy of `_encode_pair`), with cetrt's tokenization cache off, so neither side gets it
from a previous run.
Usage: python bench/hf_harness.py --model /tmp/hf/smollm2 --dataset d.jsonl --limit 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

START = time.perf_counter()
os.environ["CETRT_NO_CACHE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_baseline import accuracy, harness_style_scores  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="1: from disk only; 2: then again with weights resident")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--scores", type=Path, default=None, help="also save the per-item scores (.npy)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import encode_docs

    imports_s = time.perf_counter() - START
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype), device_map="cuda",
                                                 attn_implementation="eager").eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    encoded = encode_docs(AutoTokenizer.from_pretrained(args.model), load_docs(args.dataset, args.limit))
    tokenize_s = time.perf_counter() - start
    rounds, scored_once_s = [], None
    for _ in range(args.rounds):
        scores, stats = harness_style_scores(model, encoded, batch_size=args.batch_size)
        rounds.append({**stats, **accuracy(encoded, scores)})
        scored_once_s = scored_once_s or round(time.perf_counter() - START, 3)  # what a user who scores once waits
    if args.scores:
        np.save(args.scores, scores)
    result = {"model": args.model, "dtype": args.dtype, "items": len(encoded), "imports_s": round(imports_s, 3),
              "load_s": round(load_s, 3), "tokenize_s": round(tokenize_s, 3),
              "first_round": rounds[0], "resident_rounds": rounds[1:], "scored_once_s": scored_once_s,
              "end_to_end_s": round(time.perf_counter() - START, 3)}
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))


if __name__ == "__main__":
    main()
