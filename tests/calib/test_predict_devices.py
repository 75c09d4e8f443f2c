"""The predictor over N devices: LLaMA-30B on the 2023 machine (4x V100 32GB) as a pipeline of 4 stages."""

from __future__ import annotations

import pytest

from cetrt.calib.predict import predict
from cetrt.calib.rates import device_figures, parse_storage
from cetrt.calib.workload import count_workload
from cetrt.families import presets

MODEL_PRESETS = presets()
from cetrt.spec import Target


@pytest.fixture(scope="module")
def work(tokenizer, hellaswag_path):
    return count_workload(str(hellaswag_path), 40, None, (1024, 4096), max_positions=2048, tokenizer=tokenizer)


def _predict(work, devices):
    target = Target.from_name("v100x4")
    return predict("llama-30b", MODEL_PRESETS["llama-30b"], target.default_dtype, work, device_figures(target, None),
                   parse_storage("nvme"), target.memory_bytes, "test", devices=devices)


def test_four_v100s_hold_llama_30b_as_four_resident_stages_and_beat_one(work):
    assert Target.from_name("v100x4").devices == 4 and "V100" in Target.from_name("v100x4").peak_source
    one, four = _predict(work, 1), _predict(work, 4)
    assert not one.chosen.plan.resident  # 60 GiB of FP16 weights on one 30 GiB V100 streams
    stages = four.chosen.device_plan
    assert stages.devices == 4 and stages.resident and len(stages.plans) == 4
    assert all(p.peak_bytes <= four.budget_bytes for p in stages.plans)
    assert 0 < stages.bubble < 0.5
    assert four.floor_s * 4 == pytest.approx(one.floor_s, rel=1e-3)  # four devices' peak (padding may differ)
    assert four.floor_s <= four.chosen.total_s  # (40 items: storage-bound, so not compared with one device)
    assert four.chosen.total_s >= four.chosen.compute_s / 4  # no faster than the compute spread evenly
    text = four.describe()
    assert "devices" in text and "bubble" in text and four.to_json()["devices"]["devices"] == 4
