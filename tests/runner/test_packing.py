"""Packing: what each token may attend to, where positions continue, and how rows are batched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cetrt.errors import UserError
from cetrt.families.common import MASKED, packed_mask
from cetrt.spec import POSITION_IDS, SCORE_INDEX, SEGMENT_IDS, TARGET_IDS
from cetrt.workload.hellaswag import Doc, load_docs
from cetrt.workload.packing import make_batches, pack, pack_all
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import EncodedDoc, encode_docs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import head_slots  # noqa: E402  (bench/ is scripts, not a package: the batching before 2026-12-05, the baseline)

DOC = Doc(ind=0, activity_label="a", ctx_a="b", ctx_b="", endings=("w", "x", "y", "z"), label=0)


def encoded(ctx=(10, 11, 12), conts=((20, 21, 22), (30,), (40, 41), (50, 51, 52, 53))) -> EncodedDoc:
    return EncodedDoc(doc=DOC, context=ctx, continuations=conts, lengths=(1.0,) * 4)


def test_row_layout_drops_each_endings_last_token_and_continues_positions():
    row = pack(0, encoded())
    assert row.tokens.tolist() == [10, 11, 12, 20, 21, 40, 50, 51, 52]
    assert row.positions.tolist() == [0, 1, 2, 3, 4, 3, 3, 4, 5]
    assert row.segments.tolist() == [0, 0, 0, 1, 1, 3, 4, 4, 4]
    # every ending's first token is scored from the context's last position (index 2)
    assert row.score_index.tolist() == [2, 3, 4, 2, 2, 5, 2, 6, 7, 8]
    assert row.targets.tolist() == [20, 21, 22, 30, 40, 41, 50, 51, 52, 53]
    assert row.slot_ending.tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]


def test_mask_context_causal_endings_see_context_and_themselves_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -1]], dtype=torch.int32)
    mask = packed_mask(segments)
    allowed = (mask[0, 0] == 0).int().numpy()
    assert allowed[1].tolist() == [1, 1, 0, 0, 0, 0, 0]  # context: causal
    assert allowed[3].tolist() == [1, 1, 1, 1, 0, 0, 0]  # ending 1: context + itself, causal
    assert allowed[5].tolist() == [1, 1, 0, 0, 1, 1, 0]  # ending 2 never sees ending 1
    assert allowed[6].tolist() == [0, 0, 0, 0, 0, 0, 1]  # padding sees itself only: no NaN rows
    assert mask.shape == (1, 1, 7, 7) and mask.dtype == torch.float32 and mask.min() == MASKED


def test_batches_cover_every_row_once_in_few_padded_shapes():
    rng = np.random.default_rng(0)
    rows = [pack(i, encoded(ctx=tuple(range(int(n))))) for i, n in enumerate(rng.integers(5, 150, 300))]
    batches = make_batches(rows, ShapePlan(tokens_per_batch=1024, length_multiple=32))
    items = sorted(r.item for b in batches for r in b.rows)
    assert items == list(range(300))
    for b in batches:
        assert b.length % 32 == 0 and all(r.length <= b.length for r in b.rows)
        assert len(b.rows) * b.length <= max(1024, b.length)
    assert len({b.length for b in batches}) <= 6
    arrays = batches[0].arrays()
    assert arrays[SEGMENT_IDS].shape == (len(batches[0].rows), batches[0].length)
    assert arrays[SEGMENT_IDS].dtype == np.int32  # what the export declares: the engines take it as is
    length = batches[0].rows[0].length
    assert arrays[SEGMENT_IDS][0, :length].tolist() == batches[0].rows[0].segments.tolist()
    assert (arrays[SEGMENT_IDS][0, length:] == -1).all()
    assert arrays[SCORE_INDEX].shape == arrays[TARGET_IDS].shape == (len(batches[0].rows), batches[0].slots)
    assert arrays[POSITION_IDS].dtype == np.int64


def test_rows_of_one_length_are_batched_by_the_positions_they_score(tokenizer, hellaswag_path):
    """The head computes the vocabulary for every slot of a batch (its rows' most scored positions): rows of one
    padded length go to that length's batches in order of their scored positions, so a batch's rows need about as
    many slots. Same batch shapes as rows in order of length; fewer slots."""
    rows = pack_all(encode_docs(tokenizer, load_docs(hellaswag_path, 400)))
    plan = ShapePlan(tokens_per_batch=1024)
    batches = make_batches(rows, plan)
    by_length: dict[int, list[int]] = {}
    for b in batches:
        scored = [len(r.targets) for r in b.rows]
        assert scored == sorted(scored) and b.slots == max(scored)
        by_length.setdefault(b.length, []).extend(scored)
    assert all(counts == sorted(counts) for counts in by_length.values())
    before = head_slots.batches_by_real_length(rows, plan)  # the order before 2026-12-05
    assert [b.shape for b in batches] == [(n, length) for n, length, _ in before]
    assert sum(len(b.rows) * b.slots for b in batches) < 0.95 * sum(n * slots for n, _, slots in before)


def test_positions_beyond_the_model_are_refused_with_a_message():
    with pytest.raises(UserError, match="positions"):
        make_batches([pack(0, encoded())], ShapePlan(), max_positions=4)


def test_rows_longer_than_the_engines_accept_are_refused_with_the_fix():
    with pytest.raises(UserError, match="MAX_LENGTH=48"):
        make_batches([pack(0, encoded(ctx=tuple(range(40))))], ShapePlan(max_length=32))


def test_every_batch_falls_inside_an_optimization_profile():
    rng = np.random.default_rng(1)
    plan = ShapePlan(tokens_per_batch=2048, max_length=512)
    rows = [pack(i, encoded(ctx=tuple(range(int(n))))) for i, n in enumerate(rng.integers(1, 500, 400))]
    for batch in make_batches(rows, plan):
        plan.profile_for(len(batch.rows), batch.length, batch.slots)  # raises if outside
    assert len(plan.profiles()) == 3


def test_rows_pad_to_multiples_of_8_by_default_and_the_option_changes_it(zoo, hellaswag_path, tmp_path):
    """ce-run's default pads less than multiples of 32 and scores the same; --length-multiple reaches the batches."""
    from click.testing import CliRunner

    from cetrt.cli import run_command

    results = {}
    for name, extra in (("default", []), ("32", ["--length-multiple", "32"])):
        out = tmp_path / f"{name}.json"
        args = ["--engines", zoo.engines("llama"), "--dataset", hellaswag_path, "--limit", "40", "--quiet",
                "--json", out]
        done = CliRunner().invoke(run_command, [*map(str, args), *extra])
        assert done.exit_code == 0, done.output
        results[name] = json.loads(out.read_text())
    lengths = {name: [length for _, length in r["batch_shapes"]] for name, r in results.items()}
    assert all(length % 8 == 0 for length in lengths["default"])
    assert any(length % 32 for length in lengths["default"])  # not 32's multiples by chance
    assert all(length % 32 == 0 for length in lengths["32"])
    assert results["default"]["padded_tokens"] < results["32"]["padded_tokens"]
    assert results["default"]["tokens"] == results["32"]["tokens"]
    for one, other in zip(results["default"]["items"], results["32"]["items"], strict=True):
        assert np.allclose(one["scores"], other["scores"], atol=1e-4)


def test_a_length_multiple_that_the_engines_profiles_do_not_divide_is_refused_with_the_fix():
    """Engines with fixed profiles record their plan; a given multiple replaces its multiple and must divide its
    max length."""
    from types import SimpleNamespace

    from cetrt.runner.evaluate import RunOptions, shape_plan

    manifest = SimpleNamespace(build_options={"shape_plan": ShapePlan(tokens_per_batch=2048, max_length=384).to_json()})
    assert shape_plan(manifest, RunOptions(engines="e", length_multiple=16), 1024).length_multiple == 16
    assert shape_plan(manifest, RunOptions(engines="e"), 1024).length_multiple == 8  # the recorded one
    with pytest.raises(UserError, match=r"max length 384 .* length multiple 7: .*--length-multiple.*MAX_LENGTH"):
        shape_plan(manifest, RunOptions(engines="e", length_multiple=7), 1024)


def pack_one_by_one(item: int, doc: EncodedDoc) -> dict:
    """The row as the module docstring describes it, built token by token: the reference for `pack_all`."""
    ctx = list(doc.context)
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    score_index, targets, slot_ending = [], [], []
    for k, cont in enumerate(doc.continuations):
        start = len(tokens)
        tokens += cont[:-1]
        positions += range(len(ctx), len(ctx) + len(cont) - 1)
        segments += [k + 1] * (len(cont) - 1)
        score_index += [len(ctx) - 1] + list(range(start, start + len(cont) - 1))
        targets += cont
        slot_ending += [k] * len(cont)
    return {"item": item, "tokens": tokens, "positions": positions, "segments": segments,
            "score_index": score_index, "targets": targets, "slot_ending": slot_ending}


def as_lists(row) -> dict:
    return {"item": row.item, **{name: getattr(row, name).tolist() for name in
                                 ("tokens", "positions", "segments", "score_index", "targets", "slot_ending")}}


def test_pack_all_equals_the_row_built_token_by_token(tokenizer, hellaswag_path):
    rng = np.random.default_rng(3)
    made = [encoded(ctx=tuple(rng.integers(0, 99, int(rng.integers(1, 30)))),
                    conts=tuple(tuple(rng.integers(0, 99, int(rng.integers(1, 9)))) for _ in range(int(k))))
            for k in rng.integers(1, 7, 200)]  # one to six endings, one to eight tokens each
    real = encode_docs(tokenizer, load_docs(hellaswag_path, 300))
    for docs in (made, real, made[:1]):
        rows = pack_all(docs)
        assert [as_lists(r) for r in rows] == [pack_one_by_one(i, d) for i, d in enumerate(docs)]
        assert rows[0].segments.dtype == np.int8 and rows[0].tokens.dtype == np.int64
    assert pack_all([]) == []
    assert as_lists(pack(7, made[3])) == pack_one_by_one(7, made[3])
