"""Streaming under a memory budget: same results as resident, within budget, bytes as planned, failures kept.

The model has 32 thin layers, one per block, so that a tenth of its weights still holds two engines and a
batch in flight: the smallest budget the layer-major schedule needs. The planner's chunks (a resident run's
first chunk large enough that its compute covers the reads, the journal's later ones) are checked on made-up
sizes and rates, and once in a run.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cetrt import storage
from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.plan import (COVER_MARGIN, JOURNAL_INTERVAL_S, ModelSizes, Pacing, chunks, journal_chunk_tokens,
                         plan_from_sizes)
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import ModelSpec
from cetrt.workload.packing import Batch, PackedRow

from tiny_models import export_deep_llama

N_DOCS = 24
TOKENS_PER_BATCH = 128
FEW_BATCHES = 4 * TOKENS_PER_BATCH  # a chunk cap that makes several chunks of the 24 documents
N_LAYERS = 32
N_BLOCKS = N_LAYERS + 2


@pytest.fixture(scope="module")
def deep_export(tmp_path_factory, tokenizer):
    return export_deep_llama(tmp_path_factory.mktemp("deep"), tokenizer, N_LAYERS)


@pytest.fixture(scope="module", params=["inside", "inputs"])
def deep_engines(request, deep_export):
    """Both ways to stream: engines with their weights inside, and shared engine types fed weights files."""
    out = deep_export.parent / f"engines-{request.param}"
    if not out.exists():
        build_engines(BuildOptions(onnx_dir=deep_export, out_dir=out, weights=request.param))
    return out


def run(engines, hellaswag_path, budget=None, **kwargs):
    return evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, tokens_per_batch=TOKENS_PER_BATCH,
                               memory_budget=budget, progress=False, **kwargs))


@pytest.fixture(scope="module")
def resident(deep_engines, hellaswag_path):
    return run(deep_engines, hellaswag_path)


def test_latency_adds_up_from_its_phases(resident):
    """load + compute + blocked + the phases around and between them is the latency, no more, no less."""
    phases, streaming = resident.extra["phases"], resident.extra["streaming"]
    around = phases["before_executor_s"] + phases["executor_other_s"] + phases["after_executor_s"]
    parts = resident.load_s + resident.compute_s + streaming["blocked_on_storage_s"] + around
    assert all(v >= 0 for v in phases.values())
    assert phases["before_executor_s"] > 0  # after the executor: only the items put in order (scored per chunk)
    assert phases["of_which_device_setup_s"] <= phases["before_executor_s"]
    assert phases["process_age_at_start_s"] > 0  # this test process began before the run (test_process_age.py)
    assert parts == pytest.approx(resident.latency_s, abs=2e-3)


def test_resident_run_reads_every_engine_once(deep_engines, resident):
    plan = resident.extra["streaming"]["plan"]
    model_bytes = read_manifest(deep_engines).engine_bytes
    assert plan["resident"] and plan["passes"] == 1
    assert resident.extra["streaming"]["bytes_read"] == model_bytes == plan["bytes_to_read"]


@pytest.mark.parametrize("fraction, tier", [(2, "memory"), (4, "memory"), (10, "disk")])
def test_budget_fractions_give_the_resident_results(deep_engines, hellaswag_path, resident, fraction, tier):
    budget = read_manifest(deep_engines).engine_bytes // fraction
    # chunks of a few batches: 24 documents' activations fit a fraction of the model in one chunk (a hidden state
    # and 36 bytes a token since the mask is built in the graph), and the test is of several passes; the third
    # tier asked for (--spill): in memory, chunks cost fewer bytes here than spilling (cetrt/plan.py)
    streamed = run(deep_engines, hellaswag_path, str(budget), chunk_tokens=FEW_BATCHES, spill=tier == "disk")
    info = streamed.extra["streaming"]
    plan = info["plan"]
    assert not plan["resident"] and plan["activations"] == tier
    assert plan["passes"] >= (1 if tier == "disk" else 2)
    assert [i.scores for i in streamed.items] == [i.scores for i in resident.items]  # bit for bit
    assert info["bytes_read"] == plan["bytes_to_read"]
    assert info["peak_held_bytes"] <= budget  # the slack (one batch's working memory) is outside the held bytes
    assert plan["peak_bytes"] <= budget


def test_a_budget_below_two_engines_is_refused_with_the_minimum(deep_engines, hellaswag_path):
    with pytest.raises(UserError, match="too small: the largest engine.*export with fewer layers per block"):
        run(deep_engines, hellaswag_path, "50KB")


def test_a_budget_too_small_for_merged_engines_names_the_one_layer_build(deep_export, hellaswag_path):
    """Engines that merge layers (calib's choice) are made smaller by ce-build alone, not by a new export."""
    out = deep_export.parent / "engines-merged"
    if not out.exists():
        build_engines(BuildOptions(onnx_dir=deep_export, out_dir=out, weights="inputs", layers_per_engine=4))
    with pytest.raises(UserError, match="too small: .*these merge 4.*--layers-per-engine 1") as refused:
        run(out, hellaswag_path, "50KB")
    assert "export with fewer" not in str(refused.value)


@pytest.mark.parametrize("change, message", [("delete", "engine file is missing"), ("modify", "does not match manifest.json")])
def test_an_engine_that_changes_mid_run_stops_the_run_and_keeps_finished_chunks(
        deep_engines, hellaswag_path, resident, tmp_path, monkeypatch, change, message):
    import shutil

    engines = tmp_path / "engines"
    shutil.copytree(deep_engines, engines)
    victim = next(engines.glob("block_010.*"))
    reads = {"n": 0}
    original = storage.read_verified

    def read_then_sabotage(engines_dir, block, *args):
        reads["n"] += 1
        if reads["n"] == 2 * N_BLOCKS + 3:  # during the third chunk
            if change == "delete":
                victim.unlink()
            else:
                victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
        return original(engines_dir, block, *args)

    monkeypatch.setattr(storage, "read_verified", read_then_sabotage)
    partial = tmp_path / "results.partial.json"
    budget = read_manifest(deep_engines).engine_bytes // 4
    with pytest.raises(UserError, match=message) as error:
        run(engines, hellaswag_path, str(budget), partial_results=partial, chunk_tokens=FEW_BATCHES)
    assert "written to" in str(error.value)
    data = json.loads(partial.read_text())
    assert data["complete"] is False and 0 < data["n"] < N_DOCS
    expected = {i.ind: i.scores for i in resident.items}
    assert all(item["scores"] == list(expected[item["ind"]]) for item in data["items"])


def test_a_journaled_resident_run_reads_behind_a_larger_first_chunk(deep_engines, hellaswag_path, resident, tmp_path,
                                                                   monkeypatch):
    from cetrt.runner import evaluate as runner

    padded = [rows * length for rows, length in resident.batch_shapes]
    largest = max(padded)
    # calib's rates, made up: a journal chunk is one token (so one batch at most the largest), and reading every
    # engine, with the planner's margin, takes the compute of just under four of the largest batches
    seconds_per_token = JOURNAL_INTERVAL_S
    read_rate = COVER_MARGIN * read_manifest(deep_engines).engine_bytes / ((4 * largest - 0.5) * seconds_per_token)
    schedule = runner.run_schedule
    monkeypatch.setattr(runner, "calib_seconds_per_token", lambda engines, manifest: seconds_per_token)
    monkeypatch.setattr(runner, "run_schedule", lambda *args: dataclasses.replace(schedule(*args),
                                                                                  storage_bytes_per_s=read_rate))
    journal = tmp_path / "run.journal.jsonl"
    results = run(deep_engines, hellaswag_path, journal=journal)
    plan = results.extra["streaming"]["plan"]
    entries = [json.loads(line)["batches"] for line in journal.read_text().splitlines()[1:]]
    first = [padded[i] for i in entries[0]]
    assert plan["resident"] and plan["chunk_tokens"] == largest and len(entries) == plan["chunks"] > 1
    assert entries[0] == list(range(len(first))) and sum(first[:-1]) < 4 * largest <= sum(first)
    assert plan["first_chunk_tokens"] == sum(first)
    assert all(sum(padded[i] for i in entry) <= largest for entry in entries[1:])
    assert [i.scores for i in results.items] == [i.scores for i in resident.items]


# The planner on made-up sizes: ten engines of 1,000 bytes, 100 batches of 6 padded tokens (a 2 x 3 shape)
SPEC = ModelSpec(architecture="llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                 intermediate_size=12, vocab_size=10, max_positions=64, embed_dim=8)
SIZES = ModelSizes(SPEC, "float32", [1000] * 10)
PER_TOKEN = 8 * 4 + 36  # the FP32 hidden state; ids and positions, 8 bytes each; segment ids, 4; a scored slot, 16
# 0.5 s a token: a journal chunk is 60 tokens; reading 10,000 B at 100 B/s takes 100 s, the compute of 200 tokens
PACED = Pacing(seconds_per_token=0.5, read_bytes_per_s=100.0, journal=True)


def _batches(n: int = 100) -> list[Batch]:
    ids = np.zeros(3, dtype=np.int64)
    row = PackedRow(item=0, tokens=ids, positions=ids, segments=ids.astype(np.int8), score_index=np.zeros(1),
                    targets=np.zeros(1), slot_ending=np.zeros(1))
    return [Batch(rows=(row, row), length=3, slots=1)] * n


def _sizes(plan, batches) -> list[int]:
    return [len(chunk) for chunk in plan.chunk_indices(batches)]


def test_a_resident_journaled_plan_reads_behind_a_first_chunk_whose_compute_covers_the_reads():
    batches = _batches()
    plan = plan_from_sizes(SIZES, batches, 10**6, pacing=PACED)
    assert plan.resident and plan.chunk_tokens == journal_chunk_tokens(0.5) == 60
    # the fewest leading batches whose compute takes 1.3 x the 100 s of reads: 44 (264 tokens; 43 make 129 s)
    assert COVER_MARGIN == 1.3 and plan.first_chunk_tokens == 264 and 264 * 0.5 >= 130 > 258 * 0.5
    assert _sizes(plan, batches) == [44] + [10] * 5 + [6] and plan.chunks == 7
    assert plan.peak_bytes == 10_000 + 264 * PER_TOKEN and plan.bytes_to_read == 10_000
    assert plan.to_json()["first_chunk_tokens"] == 264 and "the first of up to 264" in plan.describe()


def test_the_first_chunk_never_exceeds_the_activation_room_or_the_chunk_cap():
    batches = _batches()
    budget = 10_000 + 120 * PER_TOKEN + PER_TOKEN - 1  # room for 120 tokens of activations, not 121
    roomy = plan_from_sizes(SIZES, batches, budget, pacing=PACED)
    assert roomy.resident and roomy.first_chunk_tokens == 120 and _sizes(roomy, batches)[:2] == [20, 10]
    assert roomy.peak_bytes <= budget
    capped = plan_from_sizes(SIZES, batches, 10**6, chunk_tokens=90, pacing=PACED)  # --chunk-tokens 90
    assert capped.first_chunk_tokens == 90 and _sizes(capped, batches)[:2] == [15, 10]


def test_without_both_rates_the_chunks_are_the_journals_or_as_large_as_memory_allows():
    batches = _batches()
    timed = plan_from_sizes(SIZES, batches, 10**6, pacing=Pacing(seconds_per_token=0.5, journal=True))
    assert timed.first_chunk_tokens == timed.chunk_tokens == 60
    assert list(timed.chunk_indices(batches)) == list(chunks(batches, 60)) and timed.chunks == 10
    untimed = plan_from_sizes(SIZES, batches, 10**6, pacing=Pacing(read_bytes_per_s=100.0, journal=True))
    assert untimed.first_chunk_tokens == untimed.chunk_tokens == 600 and untimed.chunks == 1  # the 24,576 default
    unjournaled = plan_from_sizes(SIZES, batches, 10**6, pacing=dataclasses.replace(PACED, journal=False))
    assert unjournaled == plan_from_sizes(SIZES, batches, 10**6) and unjournaled.chunks == 1


@pytest.mark.parametrize("budget, tier, sizes", [(2 * 1000 + 60 * PER_TOKEN, "memory", [10] * 10),
                                                 (2 * 1000 + 2 * 6 * 8 * 4, "disk", [100])])
def test_streamed_plans_ignore_the_pacing(budget, tier, sizes):
    batches = _batches()  # two engines and 60 tokens of activations: 10 passes; or one batch in flight: spilled
    paced = plan_from_sizes(SIZES, batches, budget, pacing=PACED)
    assert not paced.resident and paced.activations == tier
    assert paced == plan_from_sizes(SIZES, batches, budget) and paced.first_chunk_tokens == paced.chunk_tokens
    assert _sizes(paced, batches) == sizes


def test_the_third_tier_is_chosen_where_it_reads_less_than_small_chunks():
    batches = _batches()  # 600 tokens; spilling writes and reads back 2 x 600 x 32 B after 9 blocks: 345,600 B
    small = plan_from_sizes(SIZES, batches, 2 * 1000 + 12 * PER_TOKEN)  # in memory: 2-batch chunks, 50 passes
    assert small.activations == "disk" and small.chunks == 1 and small.bytes_to_read == 10_000  # < 500,000 B
    roomy = plan_from_sizes(SIZES, batches, 2 * 1000 + 60 * PER_TOKEN)  # 10 passes: 100,000 B, less than spilling
    assert roomy.activations == "memory" and roomy.chunks == 10
    forced = plan_from_sizes(SIZES, batches, 10**6, spill=True)  # ce-run --spill, though everything fits
    assert forced.activations == "disk" and not forced.resident and forced.chunks == 1


def test_streamed_chunks_split_the_tokens_evenly_in_as_many_passes():
    batches = _batches()  # 600 tokens; engines of 10,000 B, two held while streaming; room for 400 tokens: 2 passes
    sizes, budget = ModelSizes(SPEC, "float32", [10_000] * 10), 2 * 10_000 + 400 * PER_TOKEN
    plan = plan_from_sizes(sizes, batches, budget)
    assert not plan.resident and plan.activations == "memory" and plan.passes == plan.chunks == 2
    # 300 tokens each and a batch to spare (306), not 400 then 200: the second pass computes as long as the first
    assert plan.chunk_tokens == 306 and _sizes(plan, batches) == [51, 49]
    assert plan.peak_bytes == 2 * 10_000 + 306 * PER_TOKEN and plan.bytes_to_read == 2 * 100_000
    capped = plan_from_sizes(sizes, batches, budget, chunk_tokens=250)  # --chunk-tokens 250: 3 passes of 200
    assert capped.chunks == 3 and _sizes(capped, batches) == [34, 34, 32]


def test_a_budget_that_merged_engines_read_more_often_hints_at_one_layer_engines(deep_export, hellaswag_path):
    """calib merges layers without knowing a run's budget; under a small one, two merged engines leave less room
    for a chunk's activations, so the weights are read more often (the 7B shape at 1/6 of its weights: 3 passes
    with 2 layers an engine, 1 with one). The plan says so, and a one-layer build of the same export agrees."""
    from cetrt.plan import plan_memory
    from cetrt.runner.evaluate import load_tokenizer, shape_plan
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.packing import make_batches, pack_docs

    builds = {"engines-merged": 4, "engines-inputs": 1}  # the second is deep_engines' weights-as-inputs build
    for name, layers in builds.items():
        if not (deep_export.parent / name).exists():
            build_engines(BuildOptions(onnx_dir=deep_export, out_dir=deep_export.parent / name, weights="inputs",
                                       layers_per_engine=layers))
    merged_dir = deep_export.parent / "engines-merged"
    merged, single = read_manifest(merged_dir), read_manifest(deep_export.parent / "engines-inputs")
    rows = pack_docs(load_tokenizer(merged_dir, merged), load_docs(hellaswag_path, N_DOCS))
    batches = make_batches(rows, shape_plan(merged, RunOptions(engines=merged_dir), TOKENS_PER_BATCH),
                           merged.model.max_positions)
    hinted = []
    budget = merged.engine_bytes
    while budget > merged.engine_bytes // 50:
        try:
            plan = plan_memory(merged, batches, budget)
        except UserError:
            break
        if plan.hint:
            hinted.append((budget, plan))
        budget = budget * 95 // 100
    assert hinted, "no budget between the model and 1/50 of it where one-layer engines read fewer times"
    for budget, plan in hinted:
        one_layer = plan_memory(single, batches, budget)
        assert one_layer.passes < plan.passes
        assert f"would read the weights {one_layer.passes} time(s) instead of {plan.passes}" in plan.hint
        assert "--layers-per-engine 1" in plan.hint and "hint" in plan.describe()
        assert plan.to_json()["hint"] == plan.hint
    assert not plan_memory(single, batches, hinted[0][0]).hint  # engines of one layer: nothing to suggest
