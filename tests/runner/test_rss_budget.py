"""Measured memory under a budget: the process's resident set, not the executor's own count, stays bounded.

A LLaMA wide enough for its weights to dominate the process's growth ("llama-wide" in tests/tiny_models.py: 6
layers of hidden size 1024, one per block, 36 MB of FP32 weights each, 216 MB in all) streams under the
smallest budget that keeps activations in memory, about two layer blocks. The run's measured peak RSS increase (/proc/self/statm sampled while it
runs, `peak_rss_increase_bytes`) must stay within the budget plus a stated slack: the plan's working memory of
one batch, one engine more (the O_DIRECT reader, cetrt/storage.py `_read_direct`, holds its aligned buffer
and the bytes copied out of it at once: an overshoot the planner does not count, measured here at about one
engine), and 24 MiB for the interpreter's and ONNX Runtime's own allocations. The resident run goes first
(so one-off library allocations fall in it) and must exceed that bound: the measurement sees the weights.
"""

from __future__ import annotations

import pytest

from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.plan import engine_bytes, plan_memory
from cetrt.runner.evaluate import RunOptions, evaluate, load_tokenizer, shape_plan
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_docs

N_DOCS = 8
TOKENS_PER_BATCH = 256
SLACK = 24 * 2**20


@pytest.fixture(scope="module")
def wide_engines(zoo):
    return zoo.engines("llama-wide", layers_per_block=1)


def smallest_memory_tier_budget(engines, hellaswag_path):
    """Down from the whole model in 2% steps, the last budget whose plan keeps activations in memory."""
    manifest = read_manifest(engines)
    rows = pack_docs(load_tokenizer(engines, manifest), load_docs(hellaswag_path, N_DOCS))
    batches = make_batches(rows, shape_plan(manifest, RunOptions(engines=engines), TOKENS_PER_BATCH),
                           manifest.model.max_positions)
    budget, last = manifest.engine_bytes, None
    while True:
        try:
            plan = plan_memory(manifest, batches, budget)
        except UserError:
            return last
        if plan.activations != "memory":
            return last
        last = (budget, plan)
        budget = budget * 98 // 100


def test_peak_rss_stays_within_the_budget_plus_the_stated_slack(wide_engines, hellaswag_path):
    budget, plan = smallest_memory_tier_budget(wide_engines, hellaswag_path)
    assert not plan.resident and budget < read_manifest(wide_engines).engine_bytes * 0.7
    options = dict(engines=wide_engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False,
                   tokens_per_batch=TOKENS_PER_BATCH)
    largest_engine = max(engine_bytes(b) for b in read_manifest(wide_engines).blocks)
    bound = budget + plan.slack_bytes + largest_engine + SLACK
    resident = evaluate(RunOptions(**options))
    assert resident.extra["streaming"]["peak_rss_increase_bytes"] > bound
    streamed = evaluate(RunOptions(**options, memory_budget=str(budget)))
    assert streamed.extra["streaming"]["plan"]["resident"] is False
    assert 0 < streamed.extra["streaming"]["peak_rss_increase_bytes"] <= bound
    assert [i.scores for i in streamed.items] == [i.scores for i in resident.items]
