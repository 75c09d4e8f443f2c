"""Two host steps of ce-run for every item, as since 2026-12-05 against the way before, in one process, alternating:

- packing (on the latency's path before the executor): every row computed at once (`pack_all`) against a Python
  loop per document and ending (`pack` at facd620, kept here as the baseline);
- after the head's outputs reach the host: scoring the items and writing results.json (items scored once per
  chunk, one bincount per batch; results.json's items one compact line each, by json's C encoder) against the way
  before (scored per row, twice with `--json`: once for the run journal, once for the results; the whole file
  through `json.dumps(indent=2)`, json's Python encoder).

Both ways start from the same input: every item of the dataset tokenized by the given tokenizer (cached), batched at
--tokens-per-batch (the GPU default calib chose for SmolLM2), and random head outputs in those batches' shapes. The
two ways must give the same rows and the same results, or the benchmark fails. Writes JSON with the machine,
versions and command.
Usage: python bench/host_steps.py --tokenizer DIR --dataset hellaswag_val.jsonl --json out.json
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
from cetrt.workload.packing import PackedRow, make_batches, pack_all
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs, offline_tokenizer


def pack_per_document(item: int, encoded) -> PackedRow:
    """Packing before 2026-12-05, document by document (cetrt/workload/packing.py at facd620), the baseline."""
    ctx = list(encoded.context)
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    score_index, targets, slot_ending = [], [], []
    for k, cont in enumerate(encoded.continuations):
        start = len(tokens)
        fed = list(cont[:-1])
        tokens += fed
        positions += range(len(ctx), len(ctx) + len(fed))
        segments += [k + 1] * len(fed)
        score_index += [len(ctx) - 1] + list(range(start, start + len(fed)))
        targets += list(cont)
        slot_ending += [k] * len(cont)
    return PackedRow(item=item, tokens=np.asarray(tokens, dtype=np.int64),
                     positions=np.asarray(positions, dtype=np.int64), segments=np.asarray(segments, dtype=np.int8),
                     score_index=np.asarray(score_index, dtype=np.int64), targets=np.asarray(targets, dtype=np.int64),
                     slot_ending=np.asarray(slot_ending, dtype=np.int64))


def same_rows(a: list[PackedRow], b: list[PackedRow]) -> bool:
    fields = ("tokens", "positions", "segments", "score_index", "targets", "slot_ending")
    return len(a) == len(b) and all(x.item == y.item and all(np.array_equal(getattr(x, f), getattr(y, f))
                                                             and getattr(x, f).dtype == getattr(y, f).dtype
                                                             for f in fields) for x, y in zip(a, b))


def alternating(ways: dict, rounds: int) -> tuple[dict, dict]:
    """Each way's seconds over `rounds` alternating rounds, and its last result."""
    seconds, last = {name: [] for name in ways}, {}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            last[name] = way()
            seconds[name].append(round(time.perf_counter() - start, 4))
    return seconds, last


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
    pack_seconds, packed = alternating({"before": lambda: [pack_per_document(i, e) for i, e in enumerate(encoded)],
                                        "now": lambda: pack_all(encoded)}, args.rounds)
    if not same_rows(packed["before"], packed["now"]):
        sys.exit("the two ways packed different rows")
    plan = ShapePlan(tokens_per_batch=args.tokens_per_batch)
    batches = make_batches(packed["now"], plan)
    rng = np.random.default_rng(0)
    outputs = [HeadOutput(rng.normal(-3, 2, (len(b.rows), b.slots)).astype(np.float32),
                          rng.random((len(b.rows), b.slots)) < 0.05) for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.json" for name in ("before", "now")}
        score_seconds, _ = alternating({"before": lambda: before(encoded, batches, outputs, files["before"]),
                                        "now": lambda: now(encoded, batches, outputs, files["now"])}, args.rounds)
        if json.loads(files["before"].read_text()) != json.loads(files["now"].read_text()):
            sys.exit("the two ways wrote different results")
        sizes = {name: path.stat().st_size for name, path in files.items()}
    steps = {"packing": {"seconds": pack_seconds}, "scoring_and_writing": {"seconds": score_seconds,
                                                                          "file_bytes": sizes}}
    for step in steps.values():
        step["median_s"] = {name: statistics.median(runs) for name, runs in step["seconds"].items()}
        step["before_over_now"] = round(step["median_s"]["before"] / step["median_s"]["now"], 2)
    result = {"benchmark": __doc__.split("\n\n")[0].replace("\n", " "),
              "items": len(encoded), "batches": len(batches), "tokens_per_batch": args.tokens_per_batch,
              "identical_rows_and_results": True, **steps,
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
                          "numpy": np.__version__, "load_average_after": os.getloadavg()},
              "command": " ".join(sys.argv)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: step["median_s"] for name, step in steps.items()}))


if __name__ == "__main__":
    main()
