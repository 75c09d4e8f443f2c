"""Packing with a shared prefix: one row per item, `[ctx][e0][e1][e2][e3]`, batched by length.

Each ending is fed without its last token (the harness's input is (context + continuation)[:-1]); its first
token is scored from the context's last position, the rest from its own positions. Ending positions continue
from the context length; ending tokens see all of the context and their own ending causally, never another
ending: each row carries segment ids that say so, from which the layer blocks build the attention mask in the
graph (`cetrt.families.common.packed_mask`). Rows are sorted by length and padded to a few lengths, batched as
the `ShapePlan` says.
Usage: `batches = make_batches(pack_all(encoded), ShapePlan())`; `batch.arrays()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import chain

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
    """Documents straight to packed rows (the harness's tokenization, then `pack_all`), for callers that need
    no more of the encoding than the rows."""
    return pack_all(encode_docs(tokenizer, docs))


def pack(item: int, encoded: EncodedDoc) -> PackedRow:
    """One document's row (`pack_all` of one)."""
    return dataclasses.replace(pack_all([encoded])[0], item=item)


def pack_all(encoded: list[EncodedDoc]) -> list[PackedRow]:
    """Every document's row, item i from encoded[i], computed for all documents at once (a Python loop per document
    and ending took 0.33 s of ce-run's latency for all of HellaSwag on the 2-core machine); each row's arrays are
    views of six arrays shared by all rows. Per row: the context, then each ending without its last token; an
    ending's slots are the context's last position, then its own fed tokens' positions."""
    if not encoded:
        return []
    docs = len(encoded)
    ctx_len = np.fromiter((len(e.context) for e in encoded), np.int64, docs)
    ends = np.fromiter((len(e.continuations) for e in encoded), np.int64, docs)
    cont_len = np.fromiter((len(c) for e in encoded for c in e.continuations), np.int64, int(ends.sum()))
    if cont_len.size and cont_len.min() < 1:
        raise ValueError("a continuation without tokens cannot be scored")
    ctx = np.fromiter(chain.from_iterable(e.context for e in encoded), np.int64, int(ctx_len.sum()))
    conts = np.fromiter(chain.from_iterable(c for e in encoded for c in e.continuations), np.int64,
                        int(cont_len.sum()))
    doc_of = np.repeat(np.arange(docs), ends)  # per ending
    k_of = np.arange(len(cont_len)) - np.repeat(_starts(ends), ends)  # per ending: its index in its document
    fed = cont_len - 1
    fed_per_doc = np.bincount(doc_of, weights=fed, minlength=docs).astype(np.int64)
    row_len, row_start = ctx_len + fed_per_doc, _starts(ctx_len + fed_per_doc)
    # where each ending's fed tokens start in its row: after the context and the earlier endings' fed tokens
    in_row = ctx_len[doc_of] + _starts(fed) - _starts(fed_per_doc)[doc_of]

    tokens = np.empty(int(row_len.sum()), np.int64)
    positions = np.empty_like(tokens)
    segments = np.empty(tokens.size, np.int8)
    j = _offsets(ctx_len)  # context tokens
    at = np.repeat(row_start, ctx_len) + j
    tokens[at], positions[at], segments[at] = ctx, j, 0
    j, e = _offsets(fed), np.repeat(np.arange(len(fed)), fed)  # endings' fed tokens
    at = row_start[doc_of[e]] + in_row[e] + j
    tokens[at] = conts[_starts(cont_len)[e] + j]
    positions[at] = ctx_len[doc_of[e]] + j
    segments[at] = k_of[e] + 1

    j, e = _offsets(cont_len), np.repeat(np.arange(len(cont_len)), cont_len)  # slots, in the order of `conts`
    score_index = np.where(j == 0, ctx_len[doc_of[e]] - 1, in_row[e] + j - 1)
    slot_ending = k_of[e]
    slots = np.bincount(doc_of, weights=cont_len, minlength=docs).astype(np.int64)
    rows, slot_start = [], _starts(slots)
    for i, (r0, r1, s0, s1) in enumerate(zip(row_start.tolist(), (row_start + row_len).tolist(),
                                             slot_start.tolist(), (slot_start + slots).tolist())):
        rows.append(PackedRow(item=i, tokens=tokens[r0:r1], positions=positions[r0:r1], segments=segments[r0:r1],
                              score_index=score_index[s0:s1], targets=conts[s0:s1], slot_ending=slot_ending[s0:s1]))
    return rows


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of `counts` elements starts."""
    return np.cumsum(counts) - counts


def _offsets(counts: np.ndarray) -> np.ndarray:
    """0..n-1 for each run of n, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(_starts(counts), counts)


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
    """Sort rows by padded length and cut them into batches of at most `plan.tokens_per_batch` padded tokens.

    Rows of one padded length are interchangeable between that length's batches; they are ordered by how many
    positions they score, so each batch's rows need about as many head slots (the head computes its vocabulary
    for every slot of every row: ordered by real length instead, all items' batches at 16,384 tokens held 1.17
    slots a scored position). An item the model or the engines cannot take is refused by name:
    `item_name(row.item)` says which."""
    if max_positions is not None:
        too_long = [r for r in rows if r.positions.max(initial=0) >= max_positions]
        if too_long:
            raise UserError(
                f"{item_name(too_long[0].item)} needs position {int(too_long[0].positions.max())}, but the model has "
                f"{max_positions} positions ({len(too_long)} item(s) too long); this model cannot score them: "
                "remove them from the dataset or use a model with more positions"
            )
    ordered = sorted(rows, key=lambda r: (plan.padded_length(r.length), len(r.targets)))
    longest = max(rows, key=lambda r: r.length, default=None)
    if plan.max_length is not None and longest is not None and plan.padded_length(longest.length) > plan.max_length:
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
