"""cetrt's run against lm-evaluation-harness 0.4.13 itself, end to end, on a tiny model of every family.

The yardstick is the harness, not a re-implementation: its hellaswag task (the installed hellaswag.yaml with
its `process_docs`, doc_to_text, doc_to_choice, doc_to_target and `target_delimiter`, only the dataset
pointed at a local file) builds the requests, its `HFLM` (the tiny model directory, CPU, float32, offline)
answers `loglikelihood`, and the task's own `process_results` gives acc and acc_norm per document. cetrt reads
the same file and runs its packed engines. Per item: the four scores (to 1e-3), the greedy flags, acc and
acc_norm must agree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from harness_task import hellaswag_task

from cetrt.runner.evaluate import RunOptions, evaluate

from tiny_models import ARCHS

N_DOCS = 10


@pytest.fixture(scope="module")
def local_jsonl(hellaswag_path, tmp_path_factory) -> Path:
    """The first items in the official form (ctx_a, ctx_b), which both the harness task and cetrt read."""
    path = tmp_path_factory.mktemp("lm-eval") / "hellaswag_head.jsonl"
    with open(hellaswag_path) as f, open(path, "w") as out:
        for _, line in zip(range(N_DOCS), f):
            record = json.loads(line)
            record["ctx_a"], record["ctx_b"] = record.pop("ctx"), ""
            out.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def harness_task(local_jsonl):
    """The installed hellaswag task on the local file; its requests built for N_DOCS documents."""
    task = hellaswag_task([json.loads(line) for line in local_jsonl.read_text().splitlines()])
    task.build_all_requests(limit=N_DOCS, rank=0, world_size=1)
    return task


def harness_run(task, model_dir: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(scores [docs, 4], greedy [docs, 4], process_results per doc) from HFLM on the task's own requests."""
    from lm_eval.models.huggingface import HFLM

    os.environ["HF_HUB_OFFLINE"] = "1"
    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=16)
    answers = lm.loglikelihood(task.instances)
    docs = list(task.eval_docs)[:N_DOCS]
    per_doc: list[list] = [[None] * 4 for _ in docs]
    for instance, answer in zip(task.instances, answers):
        per_doc[instance.doc_id][instance.idx] = answer
    scores = np.array([[ll for ll, _ in doc] for doc in per_doc])
    greedy = np.array([[g for _, g in doc] for doc in per_doc])
    metrics = [task.process_results(doc, answers) for doc, answers in zip(docs, per_doc)]
    return scores, greedy, metrics


def test_the_harness_built_four_requests_per_document(harness_task):
    assert len(harness_task.instances) == 4 * N_DOCS


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_and_metrics_equal_lm_eval(zoo, harness_task, local_jsonl, arch):
    expected, expected_greedy, harness_metrics = harness_run(harness_task, zoo.model(arch))
    ours = evaluate(RunOptions(engines=zoo.engines(arch), dataset=str(local_jsonl), limit=N_DOCS, progress=False))
    scores = np.array([item.scores for item in ours.items])
    assert np.abs(scores - expected).max() <= 1e-3
    assert np.array_equal(np.array([item.greedy for item in ours.items]), expected_greedy)
    assert [float(item.pred == item.label) for item in ours.items] == [m["acc"] for m in harness_metrics]
    assert [float(item.pred_norm == item.label) for item in ours.items] == [m["acc_norm"] for m in harness_metrics]
    assert ours.metrics["acc_norm"] == pytest.approx(np.mean([m["acc_norm"] for m in harness_metrics]))
