"""Streaming under a memory budget: same results as resident, within budget, bytes as planned, failures kept.

The model has 32 thin layers, one per block, so that a tenth of its weights still holds two engines and a
batch in flight: the smallest budget the layer-major schedule needs.
"""

from __future__ import annotations

import json

import pytest

from cetrt import storage
from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.runner.evaluate import RunOptions, evaluate

from tiny_models import export_deep_llama

N_DOCS = 24
TOKENS_PER_BATCH = 128
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


def test_resident_run_reads_every_engine_once(deep_engines, resident):
    plan = resident.extra["streaming"]["plan"]
    model_bytes = read_manifest(deep_engines).engine_bytes
    assert plan["resident"] and plan["passes"] == 1
    assert resident.extra["streaming"]["bytes_read"] == model_bytes == plan["bytes_to_read"]


@pytest.mark.parametrize("fraction, tier", [(2, "memory"), (4, "memory"), (10, "disk")])
def test_budget_fractions_give_the_resident_results(deep_engines, hellaswag_path, resident, fraction, tier):
    budget = read_manifest(deep_engines).engine_bytes // fraction
    streamed = run(deep_engines, hellaswag_path, str(budget))
    info = streamed.extra["streaming"]
    plan = info["plan"]
    assert not plan["resident"] and plan["activations"] == tier
    assert plan["passes"] >= (1 if tier == "disk" else 2)
    assert [i.scores for i in streamed.items] == [i.scores for i in resident.items]  # bit for bit
    assert info["bytes_read"] == plan["bytes_to_read"]
    assert info["peak_held_bytes"] <= budget  # the slack (one batch's working memory) is outside the held bytes
    assert plan["peak_bytes"] <= budget


def test_a_budget_below_two_engines_is_refused_with_the_minimum(deep_engines, hellaswag_path):
    with pytest.raises(UserError, match="too small: the largest engine"):
        run(deep_engines, hellaswag_path, "50KB")


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
        run(engines, hellaswag_path, str(budget), partial_results=partial)
    assert "written to" in str(error.value)
    data = json.loads(partial.read_text())
    assert data["complete"] is False and 0 < data["n"] < N_DOCS
    expected = {i.ind: i.scores for i in resident.items}
    assert all(item["scores"] == list(expected[item["ind"]]) for item in data["items"])
