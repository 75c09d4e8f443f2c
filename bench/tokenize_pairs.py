"""What ce-run's tokenize step costs with continuations tokenized alone (cetrt.workload.pair_split, the default)
against the harness's whole-text way, on the same documents and tokenizer.

Both ways run in this process, alternating, --rounds rounds each, from the documents already loaded (loading the
tokenizer and the documents is the same on both sides); the encoded cache is not used. The two results must be
identical, or the benchmark fails. Writes JSON with the machine, versions and command.
Usage: python bench/tokenize_pairs.py --tokenizer DIR --dataset hellaswag_val.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import HarnessTokenizer, harness_requests, offline_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a saved tokenizer (tokenizer.json)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = offline_tokenizer(args.tokenizer)
    docs = load_docs(args.dataset, args.limit)
    pairs = harness_requests(docs)
    ways = {"whole_text": HarnessTokenizer(tokenizer, split_pairs=False), "split": HarnessTokenizer(tokenizer)}
    if not ways["split"].split_pairs:
        sys.exit(f"{args.tokenizer}: this tokenizer keeps the whole-text way (cetrt.workload.pair_split)")
    seconds, results = {name: [] for name in ways}, {}
    for _ in range(args.rounds):
        for name, harness in ways.items():
            start = time.perf_counter()
            results[name] = harness.encode_pairs(pairs)
            seconds[name].append(round(time.perf_counter() - start, 3))
    if results["split"] != results["whole_text"]:
        sys.exit("the two ways gave different ids: a bug in cetrt.workload.pair_split")
    import tokenizers

    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    result = {"benchmark": "the harness's tokenization of every ending: context + ending whole (lm-eval's "
                           "_encode_pair) against the ending alone where cetrt.workload.pair_split allows it",
              "items": len(docs), "pairs": len(pairs), "tokenizer": str(args.tokenizer), "identical_ids": True,
              "seconds": seconds, "median_s": medians,
              "whole_over_split": round(medians["whole_text"] / medians["split"], 2),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
                          "tokenizers": tokenizers.__version__, "load_average_after": os.getloadavg()},
              "command": " ".join(sys.argv)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians), result["whole_over_split"])


if __name__ == "__main__":
    main()
