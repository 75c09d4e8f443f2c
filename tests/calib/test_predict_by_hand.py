"""ce-predict's total on a configuration small enough to time by hand: compute + engine load + exposed I/O.

A 2-layer LLaMA of hidden size 8 (FP32 blocks of 320, 2,240, 2,240 and 352 bytes), one batch, made-up rates:
storage 1,000 B/s and sha256 4,000 B/s (checked beside the reads: a byte takes max(1, 0.25) = 1 ms), a layer block
computes the batch in 1 s, the head in 1 s, each block loads in 0.5 s. The timelines are written out below.
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


# Streamed, one read ahead, one chunk. Reads 0.32, 2.24, 2.24 and 0.352 s; the executor loads each block.
#   embed  read 0.00-0.32 (waited 0.32), load 0.32-0.82, compute 0
#   layer  read 0.82-3.06 (waited 2.24), load 3.06-3.56, compute 3.56-4.56   (its read starts once embed loaded)
#   layer  read 3.56-5.80 (waited 1.24), load 5.80-6.30, compute 6.30-7.30
#   head   read 6.30-6.652 (hidden),     load 7.30-7.80, compute 7.80-8.80
EXPOSED, TOTAL = 0.32 + 2.24 + 1.24, 8.80
# Resident, the loader thread loads each block as it arrives; the executor waits for the load (exposed I/O).
#   embed  read 0.00-0.32, load 0.32-0.82 (waited 0.82), compute 0
#   layer  read 0.82-3.06, load 3.06-3.56 (waited 2.74), compute 3.56-4.56
#   layer  read 3.56-5.80, load 5.80-6.30 (waited 1.74), compute 6.30-7.30
#   head   read 6.30-6.652, load 6.652-7.152 (hidden),   compute 7.30-8.30
RESIDENT_EXPOSED, RESIDENT_TOTAL = 0.82 + 2.74 + 1.74, 8.30


def test_resident_total_loads_each_block_as_it_arrives():
    timed = _predict(budget=2**30)
    assert timed.plan.resident and timed.plan.prefetch_depth == 1 and timed.plan.loads_as_read
    assert (timed.compute_s, timed.load_s) == pytest.approx((3.0, 0.0))
    assert timed.exposed_io_s == pytest.approx(RESIDENT_EXPOSED)
    assert timed.total_s == pytest.approx(RESIDENT_TOTAL) == timed.compute_s + timed.load_s + timed.exposed_io_s


def test_streamed_total_hides_reads_behind_the_previous_block():
    # two layer engines (4,480 B) and the batch's 6 x 76 B of activations: streamed, one read ahead
    timed = _predict(budget=4480 + 6 * 76)
    assert not timed.plan.resident and timed.plan.passes == 1 and timed.plan.prefetch_depth == 1
    assert timed.exposed_io_s == pytest.approx(EXPOSED)
    assert timed.total_s == pytest.approx(TOTAL) == timed.compute_s + timed.load_s + timed.exposed_io_s
    assert timed.io_s == pytest.approx(sum(weight_block_bytes(SPEC, "float32")) / 1000.0)  # the slower of the two rates


def test_merged_engines_are_blocks_of_several_layers():
    from cetrt.calib.predict import layers_per_block

    assert weight_block_bytes(SPEC, "float32", layers_per_engine=2) == [320, 4480, 352]
    three = SPEC.__class__(**{**SPEC.__dict__, "num_layers": 5})
    assert layers_per_block(three, 2) == [0, 2, 2, 1, 0]  # the last engine holds the rest, as ce-build merges


def test_a_merged_engine_computes_its_layers_and_binds_each_layers_weights():
    import dataclasses

    merged = dataclasses.replace(DEVICE, schedule={"layers_per_engine": 2})
    work = Workload(dataset="test", items=1, tokenizer="none", tokenizer_note="", batches={1024: [BATCH]})
    one = predict("tiny", SPEC, "float32", work, DEVICE, STORAGE, 10**6, "test").chosen
    two = predict("tiny", SPEC, "float32", work, merged, STORAGE, 10**6, "test").chosen
    assert two.compute_s == pytest.approx(one.compute_s)  # the same layers, in one engine
    assert two.load_s == pytest.approx(one.load_s)  # each layer's weights bound: embed, 2 layers, head = 4 x 0.5 s
    assert two.plan.bytes_to_read == one.plan.bytes_to_read


def test_resident_chunks_are_journaled_as_ce_run_plans_them():
    import dataclasses

    from cetrt.plan import JOURNAL_INTERVAL_S

    rows = tuple(_row(3, 2) for _ in range(40))
    batches = [Batch(rows=rows[i:i + 2], length=3, slots=2) for i in range(0, 40, 2)]  # 20 batches of 6 tokens
    work = Workload(dataset="test", items=20, tokenizer="none", tokenizer_note="", batches={1024: batches})
    # 30 s of journal interval at 2.5 s per token through both layers: 12 tokens a chunk, 2 batches
    timed = dataclasses.replace(DEVICE, seconds_per_layer_token=JOURNAL_INTERVAL_S / 24)
    assert predict("tiny", SPEC, "float32", work, timed, STORAGE, 10**6, "test").chosen.plan.chunks == 10
    assert predict("tiny", SPEC, "float32", work, DEVICE, STORAGE, 10**6, "test").chosen.plan.chunks == 1


def test_a_first_chunk_whose_compute_covers_the_reads_leaves_only_the_first_engines_read_exposed():
    import dataclasses

    eight = dataclasses.replace(SPEC, num_layers=8)  # blocks of 320, 8 x 2,240 and 352 bytes: 18,592 B
    work = Workload(dataset="test", items=60, tokenizer="none", tokenizer_note="", batches={1024: [BATCH] * 60})
    timed = dataclasses.replace(DEVICE, seconds_per_layer_token=1 / 6)  # as the FLOP rate: a 6-token batch in 1 s
    slow = Storage("slow", 100.0, "made up")  # every engine read once: 185.92 s, beyond a 30 s journal chunk
    chosen = predict("tiny", eight, "float32", work, timed, slow, 10**6, "test").chosen
    # 8/6 s a token through the model: the journal's 30 s is 22 tokens (3 batches); 1.3 x the reads' 185.92 s
    # (COVER_MARGIN) is 182 tokens, the first chunk 31 batches (186); 360 tokens in all: 31 + 9 x 3 + 2 batches
    assert (chosen.plan.first_chunk_tokens, chosen.plan.chunk_tokens, chosen.plan.chunks) == (186, 22, 11)
    # embed read 0-3.2, loaded as it arrives by 3.7 (waited); layer 1 read 3.7-26.1, loaded by 26.6 (waited
    # 22.9), compute 31 s; every later read (22.4 s, or 3.52 s for the head) starts at the previous load and is
    # loaded before its compute starts. A first chunk of the journal's 3 batches (3 s a layer) would wait about
    # 20 s more for each later layer.
    assert chosen.exposed_io_s == pytest.approx(3.2 + 0.5 + 22.4 + 0.5)
    assert chosen.io_s == pytest.approx(185.92)
