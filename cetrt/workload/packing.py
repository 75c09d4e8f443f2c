"""Packing with a shared prefix: one row per item, `[ctx][e0][e1][e2][e3]`, batched by length.

Each ending is fed without its last token (the harness's input is (context + continuation)[:-1]); its first
token is scored from the context's last position, the rest from its own positions. Ending positions continue
from the context length; ending tokens see all of the context and their own ending causally, never another
ending: each row carries segment ids that say so, from which the layer blocks build the attention mask in the
graph (`cetrt.families.common.packed_mask`). Rows are sorted by length and padded to a few lengths, batched as
the `ShapePlan` says.
Usage: `batches = make_batches([pack(i, e) for i, e in enumerate(encoded)], ShapePlan())`; `batch.arrays()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cetrt.errors import UserError
from cetrt.spec import INPUT_IDS, PAD_SEGMENT, POSITION_IDS, SCORE_INDEX, SEGMENT_IDS, TARGET_IDS
from cetrt.workload.hellaswag import Doc
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import EncodedDoc, encode_docs


@dataclass(frozen=True)
class PackedRow:
    item: int  # index into the encoded documents
    tokens: np.ndarray  # [n] int64
    positions: np.ndarray  # [n] int64
    segments: np.ndarray  # [n] int8: 0 context, k + 1 ending k
    score_index: np.ndarray  # [s] positions whose next-token log-probability is scored
    targets: np.ndarray  # [s] the token scored at each of them
    slot_ending: np.ndarray  # [s] which ending each scored token belongs to

    @property
    def length(self) -> int:
        return len(self.tokens)


def pack_docs(tokenizer, docs: list[Doc]) -> list[PackedRow]:
    """Documents straight to packed rows (the harness's tokenization, then `pack`), for callers that need
    no more of the encoding than the rows."""
    return [pack(i, e) for i, e in enumerate(encode_docs(tokenizer, docs))]


def pack(item: int, encoded: EncodedDoc) -> PackedRow:
    ctx = list(encoded.context)
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    score_index, targets, slot_ending = [], [], []
    for k, cont in enumerate(encoded.continuations):
        start = len(tokens)
        fed = list(cont[:-1])
        tokens += fed
        positions += range(len(ctx), len(ctx) + len(fed))
        segments += [k + 1] * len(fed)
        score_index += [len(ctx) - 1] + list(range(start, start + len(fed)))
        targets += list(cont)
        slot_ending += [k] * len(cont)
    return PackedRow(
        item=item,
        tokens=np.asarray(tokens, dtype=np.int64),
        positions=np.asarray(positions, dtype=np.int64),
        segments=np.asarray(segments, dtype=np.int8),
        score_index=np.asarray(score_index, dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int64),
        slot_ending=np.asarray(slot_ending, dtype=np.int64),
    )


@dataclass(frozen=True)
class Batch:
    rows: tuple[PackedRow, ...]
    length: int  # padded L
    slots: int  # padded S

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.length

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens, for throughput figures."""
        return sum(r.length for r in self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        """The block inputs that come from the batch itself (everything but hidden states)."""
        b = len(self.rows)
        ids = np.zeros((b, self.length), dtype=np.int64)
        positions = np.zeros((b, self.length), dtype=np.int64)
        segments = np.full((b, self.length), PAD_SEGMENT, dtype=np.int32)
        score_index = np.zeros((b, self.slots), dtype=np.int64)
        targets = np.zeros((b, self.slots), dtype=np.int64)
        for i, row in enumerate(self.rows):
            ids[i, : row.length] = row.tokens
            positions[i, : row.length] = row.positions
            segments[i, : row.length] = row.segments
            score_index[i, : len(row.score_index)] = row.score_index
            targets[i, : len(row.targets)] = row.targets
        return {
            INPUT_IDS: ids,
            POSITION_IDS: positions,
            SEGMENT_IDS: segments,  # the layer blocks build the packed mask from them
            SCORE_INDEX: score_index,
            TARGET_IDS: targets,
        }


def make_batches(rows: list[PackedRow], plan: ShapePlan, max_positions: int | None = None,
                 item_name=lambda i: f"item {i}") -> list[Batch]:
    """Sort rows by length and cut them into batches of at most `plan.tokens_per_batch` padded tokens.

    An item the model or the engines cannot take is refused by name: `item_name(row.item)` says which."""
    if max_positions is not None:
        too_long = [r for r in rows if r.positions.max(initial=0) >= max_positions]
        if too_long:
            raise UserError(
                f"{item_name(too_long[0].item)} needs position {int(too_long[0].positions.max())}, but the model has "
                f"{max_positions} positions ({len(too_long)} item(s) too long); this model cannot score them: "
                "remove them from the dataset or use a model with more positions"
            )
    ordered = sorted(rows, key=lambda r: r.length)
    if plan.max_length is not None and ordered and plan.padded_length(ordered[-1].length) > plan.max_length:
        longest = ordered[-1]
        raise UserError(
            f"{item_name(longest.item)} packs to {longest.length} tokens, but these engines accept rows of at most "
            f"{plan.max_length}; rebuild them with MAX_LENGTH={plan.padded_length(longest.length)} or more"
        )
    batches: list[Batch] = []
    start = 0
    while start < len(ordered):
        length = plan.padded_length(ordered[start].length)
        group = [r for r in ordered[start : start + plan.batch_size(length)] if r.length <= length]
        batches.append(Batch(rows=tuple(group), length=length, slots=max(len(r.targets) for r in group)))
        start += len(group)
    return batches
