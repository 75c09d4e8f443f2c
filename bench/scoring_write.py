"""What ce-run spends after the head's outputs reach the host, for every item: scoring the items and writing
results.json, as since 2026-12-05 (items scored once per chunk, one bincount per batch; results.json's items one
compact line each, by json's C encoder) against the way before (scored per row, twice with `--json`: once for the
run journal, once for the results; the whole file through `json.dumps(indent=2)`, json's Python encoder).

Both ways start from the same head outputs (random log-probabilities and greedy flags in the shapes of the real
batches: every item of the dataset tokenized by the given tokenizer, packed and batched at --tokens-per-batch, the
GPU default calib chose for SmolLM2) and write the same results to files; they alternate in this process,
--rounds rounds. The two files must hold the same JSON, or the benchmark fails. Writes JSON with the machine,
versions and command.
Usage: python bench/scoring_write.py --tokenizer DIR --dataset hellaswag_val.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cetrt.formats.results import ItemResult, RunResults, write_results
from cetrt.runner.executor import HeadOutput
from cetrt.runner.scoring import item_results, metrics
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs, offline_tokenizer


def items_per_row(encoded, batches, outputs) -> list[ItemResult]:
    """The scoring before 2026-12-05, row by row (runner/scoring.py at facd620), kept here as the baseline."""
    by_item = {}
    for batch, out in zip(batches, outputs):
        for r, row in enumerate(batch.rows):
            n = len(row.targets)
            logprobs = out.logprobs[r, :n].astype(np.float64)
            greedy = out.greedy[r, :n].astype(bool)
            endings = len(encoded[row.item].continuations)
            scores = np.bincount(row.slot_ending, weights=logprobs, minlength=endings)
            all_greedy = [bool(greedy[row.slot_ending == k].all()) for k in range(endings)]
            doc = encoded[row.item]
            by_item[row.item] = ItemResult(ind=doc.doc.ind, label=doc.doc.label, lengths=doc.lengths,
                                           scores=tuple(float(s) for s in scores), greedy=tuple(all_greedy))
    return [by_item[i] for i in sorted(by_item)]


def results_of(items: list[ItemResult], batches) -> RunResults:
    return RunResults(metrics=metrics(items), items=items, model="bench", model_hash="-", backend="-",
                      backend_version="-", target="-", dtype="-", dataset="-", tokenize_s=0.0, load_s=0.0,
                      compute_s=0.0, total_s=0.0, tokens=sum(b.tokens for b in batches),
                      padded_tokens=sum(b.shape[0] * b.shape[1] for b in batches),
                      batch_shapes=[b.shape for b in batches])


def before(encoded, batches, outputs, path: Path) -> None:
    items_per_row(encoded, batches, outputs)  # the journal's scoring of each chunk
    items = items_per_row(encoded, batches, outputs)  # the results' scoring at the end
    path.write_text(json.dumps(results_of(items, batches).to_json(), indent=2) + "\n")


def now(encoded, batches, outputs, path: Path) -> None:
    write_results(path, results_of(item_results(encoded, batches, outputs), batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a saved tokenizer (tokenizer.json)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    encoded = encode_docs(offline_tokenizer(args.tokenizer), load_docs(args.dataset, args.limit))
    plan = ShapePlan(tokens_per_batch=args.tokens_per_batch)
    batches = make_batches([pack(i, e) for i, e in enumerate(encoded)], plan)
    rng = np.random.default_rng(0)
    outputs = [HeadOutput(rng.normal(-3, 2, (len(b.rows), b.slots)).astype(np.float32),
                          rng.random((len(b.rows), b.slots)) < 0.05) for b in batches]
    ways = {"before": before, "now": now}
    seconds = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.json" for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                start = time.perf_counter()
                way(encoded, batches, outputs, files[name])
                seconds[name].append(round(time.perf_counter() - start, 4))
        if json.loads(files["before"].read_text()) != json.loads(files["now"].read_text()):
            sys.exit("the two ways wrote different results")
        sizes = {name: path.stat().st_size for name, path in files.items()}
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    result = {"benchmark": __doc__.split("\n\n")[0].replace("\n", " "),
              "items": len(encoded), "batches": len(batches), "tokens_per_batch": args.tokens_per_batch,
              "identical_results": True, "file_bytes": sizes, "seconds": seconds, "median_s": medians,
              "before_over_now": round(medians["before"] / medians["now"], 2),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
                          "numpy": np.__version__, "load_average_after": os.getloadavg()},
              "command": " ".join(sys.argv)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians), result["before_over_now"])


if __name__ == "__main__":
    main()
