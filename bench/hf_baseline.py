"""Baseline: HellaSwag scored the way lm-evaluation-harness's HF model does it, with transformers on a GPU.

A faithful re-implementation of lm-eval 0.4.13 `HFLM._loglikelihood_tokens` for this task (the harness itself
is not installed on the GPU machine): one request per (context, ending); input (context + continuation)[:-1];
requests sorted longest first and cut into fixed-size batches, right-padded; log-softmax over the vocabulary
in the model's dtype for every position; the continuation's log-probabilities gathered and summed. Requests
and tokens come from cetrt's harness-exact request code (tested against lm-eval's own `_encode_pair`).
Usage: `scores, stats = harness_style_scores(model, encoded_docs, batch_size=64, device="cuda")`.
"""

from __future__ import annotations

import time

import numpy as np
import torch


@torch.no_grad()
def harness_style_scores(model, encoded, batch_size: int = 64, device: str = "cuda") -> tuple[np.ndarray, dict]:
    requests = [(i, k, list(doc.context) + list(cont), len(cont))
                for i, doc in enumerate(encoded) for k, cont in enumerate(doc.continuations)]
    requests.sort(key=lambda r: -len(r[2]))  # the harness's Collator: longest first
    scores = np.zeros((len(encoded), 4))
    tokens = 0
    warm = torch.tensor([requests[-1][2][:-1]], device=device)  # library and kernel set-up, not timed
    model(warm)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in range(0, len(requests), batch_size):
        chunk = requests[b : b + batch_size]
        inputs = [r[2][:-1] for r in chunk]
        width = max(len(x) for x in inputs)
        batch = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, x in enumerate(inputs):
            batch[row, : len(x)] = torch.tensor(x)
        tokens += sum(len(x) for x in inputs)
        logprobs = torch.log_softmax(model(batch.to(device)).logits, dim=-1)  # model dtype, as the harness
        for row, (i, k, whole, n_cont) in enumerate(chunk):
            end = len(whole) - 1
            target = torch.tensor(whole[-n_cont:], device=device)
            picked = logprobs[row, end - n_cont : end].gather(-1, target[:, None])
            scores[i, k] = float(picked.sum())
    if device == "cuda":
        torch.cuda.synchronize()
    return scores, {"seconds": time.perf_counter() - start, "requests": len(requests), "tokens": tokens,
                    "batch_size": batch_size}


def accuracy(encoded, scores: np.ndarray) -> dict:
    labels = np.array([doc.doc.label for doc in encoded])
    lengths = np.array([doc.lengths for doc in encoded])
    acc = (scores.argmax(1) == labels).astype(float)
    acc_norm = ((scores / lengths).argmax(1) == labels).astype(float)
    n = len(labels)
    return {"acc": acc.mean(), "acc_stderr": acc.std(ddof=1) / np.sqrt(n),
            "acc_norm": acc_norm.mean(), "acc_norm_stderr": acc_norm.std(ddof=1) / np.sqrt(n), "n": n}
