"""From per-token log-probabilities to per-item scores, predictions, and the harness's metrics.

Score of an ending = sum of its tokens' log-probabilities; acc = argmax of scores; acc_norm = argmax of score /
len(choice) in characters (lm-eval 0.4.13 api/task.py). Standard errors are the harness's `mean_stderr`:
sample standard deviation (n - 1) over sqrt(n).
Usage: `items = item_results(encoded, batches, outputs)`; `metrics(items)`.
"""

from __future__ import annotations

import math

import numpy as np

from cetrt.formats.results import ItemResult
from cetrt.runner.executor import HeadOutput
from cetrt.workload.packing import Batch
from cetrt.workload.tokens import EncodedDoc


def item_results(encoded: list[EncodedDoc], batches: list[Batch], outputs: list[HeadOutput]) -> list[ItemResult]:
    """Sum each ending's scored slots, for the items of the given batches, in the documents' order. One bincount
    per batch over all its rows' slots (each ending a bin, its slots added in order, as per row before)."""
    by_item: dict[int, ItemResult] = {}
    for batch, out in zip(batches, outputs):
        docs = [encoded[row.item] for row in batch.rows]
        endings = np.array([len(doc.continuations) for doc in docs])
        first = np.cumsum(endings) - endings  # each row's first bin
        slots = np.array([len(row.targets) for row in batch.rows])
        used = np.arange(out.logprobs.shape[1]) < slots[:, None]  # [rows, S]: a row's first n slots are its own
        bins = np.concatenate([row.slot_ending + f for row, f in zip(batch.rows, first)])
        total = int(endings.sum())
        scores = np.bincount(bins, weights=out.logprobs[used].astype(np.float64), minlength=total).tolist()
        missed = np.bincount(bins, weights=~out.greedy[used].astype(bool), minlength=total).tolist()
        for row, doc, f, n in zip(batch.rows, docs, first.tolist(), endings.tolist()):
            by_item[row.item] = ItemResult(
                ind=doc.doc.ind, label=doc.doc.label, scores=tuple(scores[f : f + n]), lengths=doc.lengths,
                greedy=tuple(m == 0 for m in missed[f : f + n]),
            )
    return [by_item[i] for i in sorted(by_item)]


def mean_stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def metrics(items: list[ItemResult]) -> dict[str, float]:
    acc = [float(i.pred == i.label) for i in items]
    acc_norm = [float(i.pred_norm == i.label) for i in items]
    return {
        "acc": sum(acc) / len(acc),
        "acc_stderr": mean_stderr(acc),
        "acc_norm": sum(acc_norm) / len(acc_norm),
        "acc_norm_stderr": mean_stderr(acc_norm),
    }
