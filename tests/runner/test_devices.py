"""`--devices N` on CPU: a pipeline of N stages scores every item exactly as one device does.

On CPU the N "devices" are the same CPU; what is tested is the schedule (contiguous stages, batches handed
stage to stage through bounded queues, chunks finished in order) and that it changes no score, for both engine
layouts, with the stages resident and streaming under a per-device budget; and that a failure in one stage
stops every stage with one error and keeps the finished chunks.
"""

from __future__ import annotations

import json

import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.plan_devices import bubble_fraction, split_blocks
from cetrt.runner import pipeline
from cetrt.runner.evaluate import RunOptions, evaluate

from tiny_models import export_deep_llama

N_DOCS = 16
TOKENS_PER_BATCH = 128
N_LAYERS = 8


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tokenizer):
    return export_deep_llama(tmp_path_factory.mktemp("devices"), tokenizer, N_LAYERS)


@pytest.fixture(scope="module", params=["inside", "inputs"])
def engines(request, export_dir):
    out = export_dir.parent / f"engines-{request.param}"
    if not out.exists():
        build_engines(BuildOptions(onnx_dir=export_dir, out_dir=out, weights=request.param))
    return out


def run(engines, hellaswag_path, devices=1, budget=None, **kwargs):
    return evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS,
                               tokens_per_batch=TOKENS_PER_BATCH, memory_budget=budget, progress=False,
                               devices=devices, **kwargs))


@pytest.fixture(scope="module")
def single(engines, hellaswag_path):
    return run(engines, hellaswag_path)


@pytest.mark.parametrize("devices", [2, 3])
def test_resident_stages_score_every_item_as_one_device(engines, hellaswag_path, single, devices):
    multi = run(engines, hellaswag_path, devices)
    plan = multi.extra["streaming"]["plan"]
    assert plan["devices"] == devices and len(plan["stages"]) == devices
    assert plan["stages"][0][0] == 0 and plan["stages"][-1][1] == N_LAYERS + 2
    assert all(a[1] == b[0] for a, b in zip(plan["stages"], plan["stages"][1:]))  # contiguous
    assert all(p["resident"] for p in plan["plans"])
    assert [i.ind for i in multi.items] == [i.ind for i in single.items]
    assert [i.scores for i in multi.items] == [i.scores for i in single.items]  # item for item, bit for bit
    assert [i.greedy for i in multi.items] == [i.greedy for i in single.items]
    assert multi.metrics == single.metrics


@pytest.mark.parametrize("devices", [2, 3])
def test_streaming_stages_under_a_budget_score_every_item_as_one_device(engines, hellaswag_path, single, devices):
    budget = read_manifest(engines).engine_bytes * 3 // 10  # per device: below a stage's engines, so it streams
    multi = run(engines, hellaswag_path, devices, str(budget), chunk_tokens=512)
    info = multi.extra["streaming"]
    plans = info["plan"]["plans"]
    assert not all(p["resident"] for p in plans) and info["plan"]["bubble"] > 0
    assert all(p["chunks"] == plans[0]["chunks"] > 1 for p in plans)  # one chunk size for every stage
    assert info["bytes_read"] <= sum(p["bytes_to_read"] for p in plans)  # weights inputs: a stage loads only its types
    assert all(peak <= budget for peak in info["peak_held_bytes_per_device"])
    assert [i.scores for i in multi.items] == [i.scores for i in single.items]


def test_a_failing_stage_stops_every_stage_with_one_error_and_keeps_finished_chunks(
        engines, hellaswag_path, single, tmp_path, monkeypatch):
    budget = read_manifest(engines).engine_bytes * 3 // 10
    calls = {"n": 0}
    original = pipeline._Pipeline._run

    def fail_in_stage_one(self, stage, block, session, cache, i, hidden, heads):
        if stage.index == 1:
            calls["n"] += 1
            if calls["n"] == 40:  # inside a later chunk
                raise UserError("injected failure in stage 1")
        return original(self, stage, block, session, cache, i, hidden, heads)

    monkeypatch.setattr(pipeline._Pipeline, "_run", fail_in_stage_one)
    partial = tmp_path / "partial.json"
    with pytest.raises(UserError, match="injected failure in stage 1") as error:
        run(engines, hellaswag_path, 3, str(budget), chunk_tokens=512, partial_results=partial)
    assert str(error.value).count("injected failure") == 1 and "written to" in str(error.value)
    data = json.loads(partial.read_text())
    assert data["complete"] is False and 0 < data["n"] < N_DOCS
    expected = {i.ind: i.scores for i in single.items}
    assert all(item["scores"] == list(expected[item["ind"]]) for item in data["items"])


def test_more_devices_than_blocks_is_refused_with_the_range(engines, hellaswag_path):
    with pytest.raises(UserError, match=r"give 1 to 10 devices"):
        run(engines, hellaswag_path, 11)


def test_the_split_balances_compute_and_the_bubble_is_the_fill_and_drain():
    assert split_blocks([0, 1, 1, 1, 1, 1], 2) == [(0, 3), (3, 6)]  # the embed costs nothing
    assert split_blocks([5, 1, 1, 1, 1], 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert bubble_fraction(1, 10) == 0 and bubble_fraction(4, 97) == pytest.approx(3 / 100)
