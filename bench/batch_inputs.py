"""What building the batch inputs costs the host: `Batch.arrays()` for every batch of a run, and the packed mask's
share of it (`attention_mask`, FP32 [B, 1, L, L]), with its bytes, which a GPU run also uploads.

The batches are ce-run's: every item packed with SmolLM2's tokenizer and cut at --tokens-per-batch. Each of
--rounds, in this process (host work only: no engine runs; each batch's arrays dropped before the
next is built, where a resident GPU run keeps them for its chunk). Writes JSON with the machine, versions and
command.
Usage: python bench/batch_inputs.py --dataset hellaswag_val.jsonl --json bench/results/batch_inputs_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import PAD_SEGMENT, attention_mask, make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import encode_docs


def segments(batch) -> np.ndarray:
    """The segment ids `Batch.arrays()` builds its mask from."""
    out = np.full(batch.shape, PAD_SEGMENT, dtype=np.int8)
    for i, row in enumerate(batch.rows):
        out[i, : row.length] = row.segments
    return out


def timed(work, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        seconds.append(round(time.perf_counter() - start, 4))
    return seconds


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
    segment_ids = [segments(b) for b in batches]
    arrays = timed(lambda: all(b.arrays() for b in batches), args.rounds)  # each batch's dropped as the next is built
    masks = timed(lambda: all(attention_mask(s) is not None for s in segment_ids), args.rounds)
    mask_bytes = sum(attention_mask(s).nbytes for s in segment_ids)
    result = {"benchmark": __doc__.splitlines()[0], "items": len(encoded), "batches": len(batches),
              "tokens_per_batch": args.tokens_per_batch, "all_arrays_s": arrays, "masks_s": masks,
              "mask_share_of_best": round(min(masks) / min(arrays), 3), "mask_bytes": mask_bytes,
              "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "command": " ".join(["python", *sys.argv])}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("batches", "all_arrays_s", "masks_s", "mask_share_of_best", "mask_bytes")}))


if __name__ == "__main__":
    main()
