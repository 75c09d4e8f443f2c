"""The greedy flag (the harness's is_greedy) is True where it should be: on Hugging Face's own greedy continuation.

Random tiny models almost never make a dataset ending their argmax, so elsewhere both sides are all False. Here
the endings are made from the model itself: a context's greedy continuation (argmax token by token through the
Hugging Face model), a prefix of it, and the same with one token changed. They go through cetrt's packed
engines (export, build, run); every token of the first two is the argmax, so greedy must be True, and False
for the other two.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cetrt.runner.evaluate as evaluate_module
from cetrt.export.loading import load_model
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.workload.hellaswag import load_docs, query
from cetrt.workload.tokens import encode_docs

from tiny_models import ARCHS


@torch.no_grad()
def greedy_tokens(model, context: list[int], n: int) -> list[int]:
    ids = list(context)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_is_true_on_the_models_own_continuation(zoo, hellaswag_path, monkeypatch, arch):
    model = load_model(str(zoo.model(arch))).model
    [doc] = load_docs(hellaswag_path, 1)
    [encoded] = encode_docs(zoo.tokenizer, [doc])
    assert encoded.context == tuple(zoo.tokenizer(query(doc))["input_ids"])
    greedy = greedy_tokens(model, list(encoded.context), 5)
    changed = greedy[:-1] + [(greedy[-1] + 1) % len(zoo.tokenizer)]
    early = [(greedy[0] + 1) % len(zoo.tokenizer)] + greedy[1:3]
    crafted = dataclasses.replace(encoded, continuations=(tuple(greedy), tuple(changed), tuple(greedy[:3]), tuple(early)))
    monkeypatch.setattr(evaluate_module, "encode_docs", lambda tokenizer, docs: [crafted])

    results = evaluate(RunOptions(engines=zoo.engines(arch), dataset=str(hellaswag_path), limit=1, progress=False))
    assert results.items[0].greedy == (True, False, True, False)
