"""Our requests, tokenization and metrics against lm-evaluation-harness 0.4.13's own code (installed by CI).

The harness functions are called directly: its hellaswag `process_docs`, the task's `target_delimiter` and
`process_results` (tests/harness_task.py), its HF model's `_encode_pair` / `tok_encode` (on an HFLM object
given only a tokenizer, no model), and its `mean_stderr`. Nothing of cetrt's is handed to the harness.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from harness_task import hellaswag_task
from lm_eval.api.metrics import mean_stderr as harness_mean_stderr
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks.hellaswag.utils import process_docs

from cetrt.formats.results import ItemResult
from cetrt.runner.scoring import mean_stderr, metrics
from cetrt.workload.hellaswag import choices, doc_from_record, load_docs, query
from cetrt.workload.tokens import encode_docs

OFFICIAL = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
     "ctx_b": "then", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."], "label": "3"},
    {"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow a  tree [title] Pick a spot.", "ctx_b": "[step] trees need  sun.",
     "endings": ["[substeps] Water it.", "Plant it  deep [title] Then wait.", "Café résumé naïve.", "  Leave it.  "], "label": "1"},
]


def harness_lm(tokenizer) -> HFLM:
    """An HFLM with a tokenizer and no model: enough for its _encode_pair and tok_encode."""
    lm = HFLM.__new__(HFLM)
    lm.tokenizer, lm.backend, lm.add_bos_token, lm.custom_prefix_token_id = tokenizer, "causal", None, None
    return lm


def test_query_and_choices_equal_the_harness_process_docs():
    expected = process_docs(datasets.Dataset.from_list(OFFICIAL))
    for record, want in zip(OFFICIAL, expected):
        doc = doc_from_record(record, "test")
        assert query(doc) == want["query"]
        assert choices(doc) == want["choices"]
        assert doc.label == want["gold"]


@pytest.mark.parametrize("bos", [True, False])
def test_token_split_equals_the_harness_encode_pair(tokenizer, hellaswag_path, bos):
    tok = tokenizer
    if not bos:  # a tokenizer that adds no BOS by default (like SmolLM2's GGUF tokenizer)
        from tokenizers import processors

        tok = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    docs = load_docs(hellaswag_path, 150) + [doc_from_record(r, "test") for r in OFFICIAL]
    ours = encode_docs(tok, docs)
    lm = harness_lm(tok)
    delimiter = hellaswag_task(OFFICIAL).config.target_delimiter  # the task's, not cetrt's
    for doc, enc in zip(docs, ours):
        for choice, cont in zip(choices(doc), enc.continuations):
            ctx_ids, cont_ids = lm._encode_pair(query(doc), delimiter + choice)
            assert (tuple(ctx_ids), tuple(cont_ids)) == (enc.context, cont)
    assert (ours[0].context[0] == tok.bos_token_id) == bos


def test_pred_and_pred_norm_equal_the_harness_process_results(tokenizer):
    """Scores made up so that dividing by bytes instead of characters moves acc_norm ("Café résumé naïve." is
    18 characters but 22 bytes: by characters ending 0 wins the first case, by bytes ending 2). The divisor
    is cetrt's own (encode_docs), the verdict the harness's, for every gold label."""
    task = hellaswag_task(OFFICIAL)
    harness_doc = list(task.eval_docs)[1]
    [encoded] = encode_docs(tokenizer, [doc_from_record(OFFICIAL[1], "test")])
    for scores in [(-4.5, -20.0, -9.0, -4.2), (-9.0, -20.0, -18.4, -8.9), (-1.0, -3.0, -2.0, -2.0)]:
        for label in range(4):
            item = ItemResult(ind=0, label=label, scores=scores, lengths=encoded.lengths, greedy=(False,) * 4)
            expected = task.process_results({**harness_doc, "label": str(label)}, [(s, False) for s in scores])
            assert (float(item.pred == label), float(item.pred_norm == label)) == (expected["acc"], expected["acc_norm"])


def test_stderr_equals_the_harness_mean_stderr():
    rng = np.random.default_rng(0)
    values = [float(x) for x in rng.integers(0, 2, 97)]
    assert mean_stderr(values) == pytest.approx(harness_mean_stderr(values), rel=1e-12)
    items = [ItemResult(ind=i, label=int(v), scores=(0.0, 1.0, 0.0, 0.0), lengths=(1.0,) * 4, greedy=(False,) * 4)
             for i, v in enumerate(values)]
    m = metrics(items)
    assert m["acc"] == pytest.approx(sum(values) / len(values))
    assert m["acc_stderr"] == pytest.approx(harness_mean_stderr(values))
