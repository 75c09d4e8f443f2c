"""Per-item scores from the head's per-slot outputs, and results.json's text.

`item_results` sums every batch's slots in one bincount; here it is checked against the plain per-ending sum on
batches whose rows have different numbers of endings and slots, with padded slots holding values that must not
count. `results_text` writes the run's fields indented and one item a line: it must read back as the same JSON.
"""

from __future__ import annotations

import json

import numpy as np

from cetrt.formats.results import ItemResult, RunResults, results_text, write_results
from cetrt.runner.executor import HeadOutput
from cetrt.runner.scoring import item_results
from cetrt.workload.hellaswag import Doc
from cetrt.workload.packing import Batch, pack
from cetrt.workload.tokens import EncodedDoc


def encoded_doc(i: int, endings: list[int], rng) -> EncodedDoc:
    doc = Doc(ind=100 + i, activity_label="a", ctx_a="c", ctx_b="", endings=("e",) * 4, label=i % 4)
    return EncodedDoc(doc=doc, context=tuple(rng.integers(5, 50, 3 + i)),
                      continuations=tuple(tuple(rng.integers(5, 50, n)) for n in endings),
                      lengths=tuple(float(3 + n) for n in endings))


def test_item_results_sum_each_endings_slots_and_ignore_padding():
    rng = np.random.default_rng(0)
    encoded = [encoded_doc(0, [1, 3, 2, 4], rng), encoded_doc(1, [2, 2], rng), encoded_doc(2, [5, 1, 1], rng)]
    rows = [pack(i, e) for i, e in enumerate(encoded)]
    batches = [Batch(rows=(rows[2], rows[0]), length=16, slots=12), Batch(rows=(rows[1],), length=8, slots=6)]
    outputs = []
    for batch in batches:
        logprobs = rng.normal(size=(len(batch.rows), batch.slots)).astype(np.float32)
        greedy = rng.random((len(batch.rows), batch.slots)) < 0.7
        for r, row in enumerate(batch.rows):
            logprobs[r, len(row.targets):] = 1e6  # padding: never counted
            greedy[r, len(row.targets):] = False
        outputs.append(HeadOutput(logprobs, greedy))
    items = item_results(encoded, batches, outputs)

    expected = {}
    for batch, out in zip(batches, outputs):
        for r, row in enumerate(batch.rows):
            n = len(row.targets)
            k = len(encoded[row.item].continuations)
            scores = [sum(float(x) for x in out.logprobs[r, :n][row.slot_ending == e]) for e in range(k)]
            greedy = [bool(out.greedy[r, :n][row.slot_ending == e].all()) for e in range(k)]
            expected[row.item] = (scores, greedy)
    assert [item.ind for item in items] == [100, 101, 102]  # the documents' order, not the batches'
    for i, item in enumerate(items):
        scores, greedy = expected[i]
        assert np.allclose(item.scores, scores, rtol=0, atol=1e-9)
        assert item.greedy == tuple(greedy)
        assert item.lengths == encoded[i].lengths and item.label == encoded[i].doc.label
    assert any(item.greedy.count(True) not in (0, len(item.greedy)) for item in items)  # flags differ in an item


def run_results(items: list[ItemResult]) -> RunResults:
    return RunResults(metrics={"acc": 0.5}, items=items, model="m", model_hash="h", backend="onnxruntime",
                      backend_version="1", target="cpu", dtype="float32", dataset="d", tokenize_s=0.1, load_s=0.2,
                      compute_s=0.3, total_s=1.0, tokens=10, padded_tokens=12, batch_shapes=[(1, 8)],
                      extra={"streaming": {"plan": {"chunks": 1}}})


def test_results_text_reads_back_as_the_same_json_with_one_item_a_line(tmp_path):
    items = [ItemResult(ind=i, label=1, scores=(-1.25, -2e-9, -3.0, -0.1), lengths=(3.0, 4.0, 5.0, 6.0),
                        greedy=(True, False, False, True)) for i in range(3)]
    for given in (items, []):
        data = run_results(given).to_json()
        text = results_text(data)
        assert json.loads(text) == data
        assert text.endswith("\n")
        lines = text.splitlines()
        assert sum('"ind":' in line for line in lines) == len(given)  # each item whole on its own line
    path = tmp_path / "results.json"
    write_results(path, run_results(items))
    back = json.loads(path.read_text())
    assert [ItemResult.from_json(item) for item in back["items"]] == items
    assert back["streaming"] == {"plan": {"chunks": 1}}
