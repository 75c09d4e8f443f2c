"""ce-predict's total on a configuration small enough to time by hand: compute + engine load + exposed I/O.

A 2-layer LLaMA of hidden size 8 (FP32 blocks of 320, 2,240, 2,240 and 352 bytes), one batch, made-up rates:
storage 1,000 B/s and sha256 4,000 B/s (a byte takes 1.25 ms to read and check), a layer block computes the
batch in 1 s, the head in 1 s, each block loads in 0.5 s. The timelines are written out below.
"""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.calib.predict import predict, weight_block_bytes
from cetrt.calib.rates import DeviceFigures, Storage
from cetrt.calib.workload import Workload
from cetrt.spec import ModelSpec, Target
from cetrt.workload.packing import Batch, PackedRow

SPEC = ModelSpec(architecture="llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                 intermediate_size=12, vocab_size=10, max_positions=64, embed_dim=8)
LAYER_FLOP = 7296  # one layer over the batch: 2 x 6 positions x 560 weights + attention 576 (tests/calib/test_predict.py)


def _row(length: int, slots: int) -> PackedRow:
    ids = np.zeros(length, dtype=np.int64)
    return PackedRow(item=0, tokens=ids, positions=ids, segments=ids.astype(np.int8), score_index=np.zeros(slots),
                     targets=np.zeros(slots), slot_ending=np.zeros(slots))


BATCH = Batch(rows=(_row(3, 2), _row(2, 2)), length=3, slots=2)  # 6 padded tokens, 4 scored slots
DEVICE = DeviceFigures(
    target=Target.from_name("cpu"), peak_flops=None, peak_source="", measured_rates=((1024, float(LAYER_FLOP)),),
    measured_head=((1024, 0.25),), efficiency=None, efficiency_source="", memory_bytes_per_s=None,
    load_s_per_block=0.5, load_source="made up", measured_storage=None, verify_bytes_per_s=4000.0,
    verify_source="made up", schedule={})
STORAGE = Storage("test", 1000.0, "made up")


def _predict(budget: int):
    work = Workload(dataset="test", items=1, tokenizer="none", tokenizer_note="", batches={1024: [BATCH]})
    return predict("tiny", SPEC, "float32", work, DEVICE, STORAGE, budget, "test").chosen


def test_the_blocks_are_the_sizes_the_hand_count_uses():
    assert weight_block_bytes(SPEC, "float32") == [320, 2240, 2240, 352]


def test_resident_total_is_every_read_load_and_compute_in_turn():
    # resident: each block read when first needed, nothing ahead. reads 0.4 + 2.8 + 2.8 + 0.44 = 6.44 s,
    # loads 4 x 0.5 = 2 s, compute 0 (embed) + 1 + 1 + 1 (head: 4 slots x 0.25 s) = 3 s
    timed = _predict(budget=2**30)
    assert timed.plan.resident
    assert (timed.compute_s, timed.load_s) == pytest.approx((3.0, 2.0))
    assert timed.exposed_io_s == pytest.approx(6.44)
    assert timed.total_s == pytest.approx(11.44)


def test_streamed_total_hides_reads_behind_the_previous_block():
    # two layer engines (4,480 B) and the batch's 6 x 76 B of activations: streamed, one read ahead.
    #   embed  read 0.0-0.4 (waited 0.4), load 0.4-0.9, compute 0
    #   layer  read 0.9-3.7 (waited 2.8), load 3.7-4.2, compute 4.2-5.2
    #   layer  read 4.2-7.0 (waited 1.8), load 7.0-7.5, compute 7.5-8.5
    #   head   read 7.5-7.94 (hidden),    load 8.5-9.0, compute 9.0-10.0
    timed = _predict(budget=4480 + 6 * 76)
    assert not timed.plan.resident and timed.plan.passes == 1 and timed.plan.prefetch_depth == 1
    assert timed.exposed_io_s == pytest.approx(5.0)
    assert timed.total_s == pytest.approx(10.0) == timed.compute_s + timed.load_s + timed.exposed_io_s
