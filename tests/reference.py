"""The yardstick: lm-evaluation-harness's way of scoring, through the Hugging Face model itself.

One sequence per (context, ending): input (context + continuation)[:-1], log-softmax over the vocabulary,
the continuation's tokens summed; greedy when every continuation token is the argmax. FP32, no packing.
Usage: `scores, greedy = harness_scores(model, encoded_docs)`.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def harness_scores(model, encoded) -> tuple[np.ndarray, np.ndarray]:
    scores = np.zeros((len(encoded), 4))
    greedy = np.zeros((len(encoded), 4), dtype=bool)
    for i, doc in enumerate(encoded):
        for k, cont in enumerate(doc.continuations):
            whole = list(doc.context) + list(cont)
            inp = torch.tensor([whole[:-1]])
            logprobs = torch.log_softmax(model(inp).logits.float(), dim=-1)[0, -len(cont):]
            target = torch.tensor(cont)
            scores[i, k] = logprobs.gather(-1, target[:, None]).sum().item()
            greedy[i, k] = bool((logprobs.argmax(-1) == target).all())
    return scores, greedy
