"""Packed shared-prefix scores through ORT engines equal the harness's per-ending scores through HF."""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.export.loading import load_model
from cetrt.formats.manifest import read_manifest
from cetrt.runner.evaluate import RunOptions, evaluate, load_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import encode_docs

from reference import harness_scores
from tiny_models import ARCHS

N_DOCS = 24


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_scores_equal_per_ending_scores(zoo, hellaswag_path, arch):
    engines = zoo.engines(arch)
    # small batches and chunks, so rows of several lengths share a batch and chunks split the run
    results = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS,
                                  tokens_per_batch=700, chunk_tokens=1500, progress=False))
    ours = np.array([item.scores for item in results.items])
    ours_greedy = np.array([item.greedy for item in results.items])

    docs = load_docs(hellaswag_path, N_DOCS)
    encoded = encode_docs(load_tokenizer(engines, read_manifest(engines)), docs)
    expected, expected_greedy = harness_scores(load_model(str(zoo.model(arch))).model, encoded)

    assert len(results.batch_shapes) > 3  # the run really was batched and padded
    assert np.abs(ours - expected).max() <= 1e-3
    assert np.array_equal(ours_greedy, expected_greedy)
    assert [i.ind for i in results.items] == [d.ind for d in docs]


def test_fp16_engines_stay_close_to_fp32(zoo, hellaswag_path):
    """FP16 engines (ORT CPU casts where it lacks FP16 kernels) score like FP32 within FP16 rounding."""
    fp32 = evaluate(RunOptions(engines=zoo.engines("llama"), dataset=str(hellaswag_path), limit=12, progress=False))
    fp16 = evaluate(RunOptions(engines=zoo.engines("llama", "float16"), dataset=str(hellaswag_path), limit=12, progress=False))
    diff = np.abs(np.array([i.scores for i in fp32.items]) - np.array([i.scores for i in fp16.items])).max()
    assert 0 < diff <= 0.1
