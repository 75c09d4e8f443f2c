"""What building the batch inputs costs the host: `Batch.arrays()` for every batch of a run as it is now (segment
ids; the layer blocks build the packed mask in the graph) against the same arrays with the FP32 [B, 1, L, L] mask
the host built and uploaded until 2026-12-03 (`host_mask` below: that rule, kept here as the baseline only), with
the bytes each sends to a GPU.

The batches are ce-run's: every item packed with SmolLM2's tokenizer and cut at --tokens-per-batch. Each of
--rounds, in this process, alternating the two (host work only: no engine runs; each batch's arrays dropped
before the next is built, where a resident GPU run keeps them for its chunk). Writes JSON with the machine,
versions and command.
Usage: python bench/batch_inputs.py --dataset hellaswag_val.jsonl --json bench/results/batch_inputs_cpu.json
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

import numpy as np

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.spec import PAD_SEGMENT, SEGMENT_IDS
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs


def host_mask(segments: np.ndarray) -> np.ndarray:
    """The baseline: the additive FP32 mask [B, 1, L, L] the host built from segment ids until 2026-12-03 (the
    rule is cetrt.families.common.packed_mask's, now in the graph)."""
    l = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = np.tril(np.ones((l, l), dtype=bool))[None] & ((key == 0) | (key == query))
    allowed &= (key != PAD_SEGMENT) & (query != PAD_SEGMENT)
    allowed |= np.eye(l, dtype=bool)[None] & (query == PAD_SEGMENT)
    return np.where(allowed, np.float32(0), np.float32(-1e9))[:, None, :, :]


def with_host_mask(batch) -> dict:
    arrays = batch.arrays()
    arrays["attention_mask"] = host_mask(arrays.pop(SEGMENT_IDS))
    return arrays


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return round(time.perf_counter() - start, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tokens-per-batch", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    encoded = encode_docs(load_counting_tokenizer(None)[0], load_docs(args.dataset, args.limit))
    batches = make_batches([pack(i, e) for i, e in enumerate(encoded)], ShapePlan(tokens_per_batch=args.tokens_per_batch))
    now, before = [], []
    for _ in range(args.rounds):  # alternating, so both see the same machine
        now.append(timed(lambda: all(b.arrays() for b in batches)))  # each batch's dropped as the next is built
        before.append(timed(lambda: all(with_host_mask(b) for b in batches)))
    sent = {"now": sum(a.nbytes for b in batches for a in b.arrays().values()),
            "before": sum(a.nbytes for b in batches for a in with_host_mask(b).values())}
    result = {"benchmark": __doc__.splitlines()[0], "items": len(encoded), "batches": len(batches),
              "tokens_per_batch": args.tokens_per_batch, "arrays_now_s": now, "arrays_with_host_mask_s": before,
              "host_mask_over_now": round(statistics.median(before) / statistics.median(now), 2),
              "bytes_to_device": sent,
              "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "command": " ".join(["python", *sys.argv]),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("batches", "arrays_now_s", "arrays_with_host_mask_s", "host_mask_over_now",
                                             "bytes_to_device")}))


if __name__ == "__main__":
    main()
