"""The run-time predictor: FLOP by hand, the planner's passes, storage monotonicity, sources, clean errors.

Tokens are counted with the tiny offline tokenizer of the test suite (fast), on a few dataset items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cetrt.calib import flop
from cetrt.calib.predict import pipeline_s, predict
from cetrt.families import presets

MODEL_PRESETS = presets()
from cetrt.calib.rates import STORAGE_PRESETS, device_figures, parse_storage
from cetrt.calib.workload import count_workload
from cetrt.cli import predict_command
from cetrt.errors import UserError
from cetrt.formats.calib import CalibRecord
from cetrt.spec import ModelSpec, Target
from cetrt.workload.packing import Batch, PackedRow

# the streaming engines (a block read ahead and the one computing) of LLaMA-30B, and a few thousand tokens
TIGHT = 2 * MODEL_PRESETS["llama-30b"].layer_bytes("float16") + 64 * 2**20
JSON_KEYS = {"predicted_s", "floor_s", "flop", "tokens", "compute_s", "io_s", "exposed_io_s", "passes",
             "peak_memory_bytes", "sources", "model", "target", "storage", "tokenizer", "dataset", "items"}


def _row(length: int, slots: int) -> PackedRow:
    ids = np.zeros(length, dtype=np.int64)
    return PackedRow(item=0, tokens=ids, positions=ids, segments=ids.astype(np.int8), score_index=np.zeros(slots),
                     targets=np.zeros(slots), slot_ending=np.zeros(slots))


def test_layer_and_head_flop_match_a_hand_count():
    spec = ModelSpec(architecture="llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                     intermediate_size=12, vocab_size=10, max_positions=64, embed_dim=8)
    batch = Batch(rows=(_row(3, 2), _row(2, 2)), length=3, slots=2)
    # one layer: q, k, v, o 4 * 8 * 8 = 256, gate, up, down 3 * 8 * 12 = 288, two norms 16: 560 weights
    # 2 rows x 3 padded positions x 2 x 560 = 6,720; attention 4 x 2 rows x 3 x 3 x (2 heads x 4) = 576
    assert flop.layer_block_flop(spec, 1, batch) == 6720 + 576
    assert flop.layer_block_flop(spec, 2, batch) == 2 * (6720 + 576)
    assert flop.head_flop(spec, batch) == 2 * 2 * (2 * 8 * 10)  # rows x slots x vocabulary matmul
    assert flop.run_flop(spec, [batch, batch]) == 2 * (2 * (6720 + 576) + 320 * 2)


def test_pipeline_hides_reads_behind_the_previous_compute():
    steps = [(2.0, 0.0, 1.0)] * 3  # read 2 s, compute 1 s: each read after the first waits 1 s
    assert pipeline_s(steps, depth=1) == (7.0, 4.0)
    assert pipeline_s(steps, depth=0) == (9.0, 6.0)  # no read-ahead: every read is waited for
    assert pipeline_s([(1.0, 0.5, 3.0)] * 3, depth=1) == (1.0 + 3 * 3.5, 1.0)


def test_blocks_loaded_as_they_arrive_keep_reading_through_a_slow_block():
    """A first block computing 5 s: the executor loading each block stops the reader after one block ahead;
    a loader thread (resident) frees each read slot at once, so the other reads finish under that compute."""
    steps = [(1.0, 0.0, 5.0)] + [(1.0, 0.0, 0.0)] * 3
    assert pipeline_s(steps, depth=1) == (8.0, 3.0)
    assert pipeline_s(steps, depth=1, loads_as_read=True) == (6.0, 1.0)


@pytest.fixture(scope="module")
def work(tokenizer, hellaswag_path):
    return count_workload(str(hellaswag_path), 40, None, (1024, 4096), max_positions=2048, tokenizer=tokenizer)


def _predict(work, model="llama-30b", target="orin-agx-32gb", storage="nvme", budget=None, calib=None):
    target = Target.from_name(target)
    budget = budget or target.memory_bytes
    return predict(model, MODEL_PRESETS[model], target.default_dtype, work, device_figures(target, calib),
                   parse_storage(storage), budget, "test")


def test_passes_come_from_the_runners_planner(work):
    fits = _predict(work, model="llama-7b", target="h100")
    assert fits.chosen.plan.resident and fits.chosen.plan.passes == 1
    streams = _predict(work)  # LLaMA-30B (60 GiB) on the Orin's 28 GiB
    assert not streams.chosen.plan.resident
    tight = _predict(work, budget=TIGHT)  # chunks that fit in memory would each read 60 GiB: hidden states spill
    assert tight.chosen.plan.activations == "disk" and tight.chosen.plan.passes == 1 and tight.chosen.spill_s > 0
    assert tight.to_json()["bytes_read"] == tight.chosen.plan.model_bytes and tight.to_json()["spill_s"] > 0
    assert "spilled" in tight.describe()
    # by hand: every padded token's hidden state (6,656 FP16 values) written after each of the 61 blocks before the
    # head and read back before each of the 61 after the embed, at NVMe's rate
    padded = sum(b.shape[0] * b.shape[1] for b in work.batches[tight.chosen.tokens_per_batch])
    crossings = 2 * (MODEL_PRESETS["llama-30b"].num_layers + 1)
    assert tight.chosen.spill_s == pytest.approx(padded * 6656 * 2 * crossings / parse_storage("nvme").bytes_per_s)


@pytest.mark.parametrize("budget", [None, TIGHT])
def test_slower_storage_never_predicts_less_time_or_more_passes(work, budget):
    runs = [_predict(work, storage=s, budget=budget) for s in ("8", "nvme", "emmc", "sd", "0.01")]
    times = [r.chosen.total_s for r in runs]
    passes = [r.chosen.plan.passes for r in runs]
    assert times == sorted(times) and passes == sorted(passes, reverse=True)
    assert runs[-1].chosen.exposed_io_s > runs[0].chosen.exposed_io_s


def test_prediction_is_never_below_its_floor_and_has_every_key(work):
    prediction = _predict(work, storage="sd")
    data = prediction.to_json()
    assert JSON_KEYS <= set(data)
    assert data["predicted_s"] >= data["compute_s"] >= data["floor_s"] > 0
    assert data["exposed_io_s"] <= data["io_s"]
    assert set(data["by_storage"]) >= set(STORAGE_PRESETS)
    assert all(data["sources"][k] for k in ("compute", "floor", "storage", "passes", "load", "exposed_io"))
    assert data["sources"]["compute"].startswith("assumption")
    assert "not measured on it" in prediction.describe()
    json.dumps(data)


def _calib(measured: dict) -> CalibRecord:
    return CalibRecord(model_id="m", model_hash="h", export_digest="d", dtype="float32", dataset="test",
                       precision={}, measured=measured, schedule={})


def test_rates_measured_on_the_target_replace_the_assumption(work):
    calib = _calib({"device": "cpu", "target": "cpu",
                    "storage": {"bytes_per_s": 1.5e9, "direct_io": True, "verify_bytes_per_s": 2e9,
                                "verify_digest": "xxh3_128"},
                    "load_s_per_block": 0.01, "bind_s_per_block": 0.002,
                    "compute": [{"tokens_per_batch": 1024, "flop_per_s": 2e11},
                                {"tokens_per_batch": 4096, "flop_per_s": 3e11}]})
    prediction = _predict(work, model="smollm2-135m", target="cpu", calib=calib)
    assert prediction.measured_on_target and "from measurements on it" in prediction.describe()
    assert prediction.sources["compute"].startswith("calib.json")
    assert prediction.chosen.flop_per_s in (2e11, 3e11)
    assert (prediction.chosen.load_s > 0) != prediction.chosen.plan.loads_as_read  # resident: loaded beside
    assert prediction.sources["verify"].startswith("calib.json")
    storage = {k: v for k, v in calib.measured["storage"].items() if k != "verify_digest"}
    before = _calib({**calib.measured, "storage": storage})  # from before issue 12: a sha256 rate
    assert _predict(work, model="smollm2-135m", target="cpu", calib=before).sources["verify"].startswith("assumption")
    elsewhere = _calib({**calib.measured, "target": "h100"})
    assert not _predict(work, target="orin-agx-32gb", calib=elsewhere).measured_on_target
    with pytest.raises(UserError, match="no datasheet compute figure"):
        device_figures(Target.from_name("cpu"), elsewhere)


def _fails_cleanly(args, message):
    result = CliRunner().invoke(predict_command, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a message, no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_bad_inputs_fail_with_one_line(tmp_path):
    _fails_cleanly(["--model", "llama-30b", "--storage", "fast"], "give one of nvme, emmc, sd")
    _fails_cleanly(["--model", "llama-31b"], "presets: llama-7b")
    _fails_cleanly(["--model", "llama-7b", "--target", "cpu"], "run the calibration on that machine")
    _fails_cleanly(["--model", "llama-7b", "--calib", str(tmp_path / "nope.json")], "no such calib.json")


def test_command_names_the_tokenizer_it_counted_with(tokenizer, hellaswag_path, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "prediction.json"
    result = CliRunner().invoke(predict_command, [
        "--model", "llama-30b", "--dataset", str(hellaswag_path), "--limit", "10", "--tokenizer", str(tmp_path / "tok"),
        "--storage", "emmc", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert str(tmp_path / "tok") in data["tokenizer"] and "LLaMA's own tokenizer" in data["tokenizer_note"]
    assert data["items"] == 10 and data["storage"]["name"] == "emmc" and data["target"] == "orin-agx-32gb"
    assert "PREDICTION for orin-agx-32gb: not measured on it" in result.output
    assert str(tmp_path / "tok") in result.output


def test_config_json_gives_the_same_shape_as_the_preset(tmp_path):
    from cetrt.calib.presets import resolve_model

    config = {"model_type": "opt", "hidden_size": 4096, "num_hidden_layers": 32, "ffn_dim": 16384,
              "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
              "word_embed_proj_dim": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(tmp_path))[1] == MODEL_PRESETS["opt-6.7b"]
    assert resolve_model(str(Path(tmp_path) / "config.json"))[1] == MODEL_PRESETS["opt-6.7b"]
