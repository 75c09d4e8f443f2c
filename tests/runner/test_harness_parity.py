"""Our requests, tokenization and metrics against lm-evaluation-harness 0.4.13's own code (installed by CI).

The harness functions are called directly: its hellaswag `process_docs`, its HF model's `_encode_pair` /
`tok_encode` (on an HFLM object given only a tokenizer, no model), and its `mean_stderr`.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from lm_eval.api.metrics import mean_stderr as harness_mean_stderr
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks.hellaswag.utils import process_docs

from cetrt.formats.results import ItemResult
from cetrt.runner.scoring import mean_stderr, metrics
from cetrt.workload.hellaswag import TARGET_DELIMITER, choices, doc_from_record, load_docs, query
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
    for doc, enc in zip(docs, ours):
        for choice, cont in zip(choices(doc), enc.continuations):
            ctx_ids, cont_ids = lm._encode_pair(query(doc), TARGET_DELIMITER + choice)
            assert (tuple(ctx_ids), tuple(cont_ids)) == (enc.context, cont)
        assert enc.lengths == tuple(float(len(c)) for c in choices(doc))
    assert (ours[0].context[0] == tok.bos_token_id) == bos


def test_acc_norm_divides_by_characters_not_bytes():
    doc = doc_from_record(OFFICIAL[1], "test")
    texts = choices(doc)
    item = ItemResult(ind=0, label=0, scores=(-4.5, -20.0, -9.0, -4.2),
                      lengths=tuple(float(len(c)) for c in texts), greedy=(False,) * 4)
    assert item.lengths == (10.0, 25.0, 18.0, 9.0)
    assert len(texts[2].encode()) == 22  # "Café résumé naïve." is 18 characters but 22 bytes
    by_bytes = int(np.argmax(np.array(item.scores) / [len(c.encode()) for c in texts]))
    assert (item.pred, item.pred_norm, by_bytes) == (3, 0, 2)


def test_stderr_equals_the_harness_mean_stderr():
    rng = np.random.default_rng(0)
    values = [float(x) for x in rng.integers(0, 2, 97)]
    assert mean_stderr(values) == pytest.approx(harness_mean_stderr(values), rel=1e-12)
    items = [ItemResult(ind=i, label=int(v), scores=(0.0, 1.0, 0.0, 0.0), lengths=(1.0,) * 4, greedy=(False,) * 4)
             for i, v in enumerate(values)]
    m = metrics(items)
    assert m["acc"] == pytest.approx(sum(values) / len(values))
    assert m["acc_stderr"] == pytest.approx(harness_mean_stderr(values))
