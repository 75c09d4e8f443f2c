"""The memory plan: what stays resident, how many tokens a chunk holds, where activations live, what is read.

Weight-stationary, layer-major (DESIGN.md): a chunk of batches goes through block i before block i+1, so each
streamed engine is read once per chunk. The budget covers what the runner holds: engines (the one in use and
those read ahead) and the chunk's activations; the chunk is as large as the budget allows. One batch's working
memory inside the backend (attention scores, the head's logits) comes on top: the plan states it as the slack. When the whole model fits, every
engine is read once and stays; with a run journal, chunks hold about JOURNAL_INTERVAL_S of compute, but the
first chunk, the only one that reads, holds enough tokens that its compute covers reading every engine once
(calib's rates, `Pacing`), so the reads hide behind it. When not even one batch of activations fits beside two
engines, activations spill to memory-mapped files (the third tier) and the weights are read once.
Usage: `plan = plan_memory(manifest, batches, budget_bytes=parse_size("8GiB"))`; `print(plan.describe())`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

from cetrt.errors import UserError
from cetrt.formats.manifest import EngineBlock, Manifest
from cetrt.options import parse_size  # noqa: F401  (re-exported: plan.parse_size)
from cetrt.spec import ModelSpec, dtype_bytes
from cetrt.workload.packing import Batch


def available_memory() -> int:
    """MemAvailable from /proc/meminfo: what `--memory-budget auto` means (on the Orin, CPU and GPU share it)."""
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise UserError("--memory-budget auto reads /proc/meminfo, which this system does not have; give a size")


def activation_bytes_per_token(model: ModelSpec, dtype: str) -> int:
    """What a chunk holds per padded token between blocks: the hidden state, plus the batch inputs kept for
    the chunk (ids and positions, 8 bytes each; segment ids, 4; at most one scored slot, 16)."""
    return model.hidden_size * dtype_bytes(dtype) + 36


def working_bytes(spec: ModelSpec, dtype: str, batch: Batch) -> int:
    """Memory one batch needs inside a block beyond its stored activations: an estimate, not a measurement.

    The largest of: a layer's intermediates (mask, FP32 scores and probabilities per head, the fused MLP
    activations, hidden in and out) and the head's FP32 logits and log-probabilities over the vocabulary.
    """
    b, l = len(batch.rows), batch.length
    width = dtype_bytes(dtype)
    tokens = b * l
    layer = b * l * l * 4 * (1 + 2 * spec.num_heads) + tokens * (2 * spec.intermediate_size + 4 * spec.hidden_size) * width
    head = b * batch.slots * spec.vocab_size * 4 * 2
    return max(layer, head) + 2 * tokens * spec.hidden_size * width


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    model_bytes: int
    resident: bool  # every engine loaded once and kept
    chunk_tokens: int  # padded tokens per chunk
    first_chunk_tokens: int  # the first chunk's (>= chunk_tokens; resident, larger so its compute covers the reads)
    chunks: int
    bytes_to_read: int
    activations: str  # "memory" or "disk"
    peak_bytes: int  # engines + activations held, as planned (at most the budget)
    slack_bytes: int  # one batch's working memory inside the backend, on top of the budget (an estimate)
    prefetch_depth: int  # engines read ahead of the one computing (resident too: the first pass overlaps its reads)
    hint: str = ""  # what would make this budget read the weights fewer times (plan_memory), if anything

    @property
    def loads_as_read(self) -> bool:
        """Whether each engine is loaded as soon as it is read, freeing its read slot (resident: the store's loader
        thread, runner/executor.py), so reads never wait for compute; streamed, the executor loads a block when it
        reaches it and only then may the reader start another."""
        return self.resident

    @property
    def room_bytes(self) -> int:
        """The budget the plan does not hold: where a resident store keeps blocks read before the engine types are
        ready to load them (runner/executor.py), so the reader need not wait for the preparation."""
        return max(0, self.budget_bytes - self.peak_bytes)

    @property
    def passes(self) -> int:
        """How many times the weights are read from storage."""
        return 1 if self.resident else self.chunks

    def chunk_indices(self, batches: list[Batch]) -> Iterator[list[int]]:
        """The batch indices of each chunk, in run order, for the batches this plan was made for."""
        return chunks(batches, self.chunk_tokens, self.first_chunk_tokens)

    def describe(self) -> str:
        gib = 2**30
        engines = ("all stay resident (read once, each loaded as it arrives)" if self.resident
                   else f"streamed, {self.prefetch_depth} read ahead")
        first = (f"; the first of up to {self.first_chunk_tokens:,}, sized to hide the reads"
                 if self.first_chunk_tokens != self.chunk_tokens else "")
        rows = [
            ("budget", f"{self.budget_bytes / gib:.2f} GiB for {self.model_bytes / gib:.2f} GiB of engines"),
            ("engines", engines),
            ("chunks", f"{self.chunks} of up to {self.chunk_tokens:,} padded tokens{first}"),
            ("weights read", f"{self.passes} pass(es), {self.bytes_to_read / gib:.2f} GiB"),
            ("activations", "in memory" if self.activations == "memory" else "spilled to memory-mapped files"),
            ("expected peak", f"{self.peak_bytes / gib:.3f} GiB held, plus up to {self.slack_bytes / gib:.3f} GiB "
                              "working memory of one batch"),
        ]
        rows += [("hint", self.hint)] if self.hint else []
        return "\n".join(f"  plan {k:<13} {v}" for k, v in rows)

    def to_json(self) -> dict:
        return {"budget_bytes": self.budget_bytes, "model_bytes": self.model_bytes, "resident": self.resident,
                "chunk_tokens": self.chunk_tokens, "first_chunk_tokens": self.first_chunk_tokens, "chunks": self.chunks,
                "passes": self.passes, "bytes_to_read": self.bytes_to_read, "activations": self.activations,
                "peak_bytes": self.peak_bytes, "slack_bytes": self.slack_bytes, "prefetch_depth": self.prefetch_depth,
                **({"hint": self.hint} if self.hint else {})}


def engine_bytes(block: EngineBlock) -> int:
    return sum(f.bytes for f in block.files)


def chunks(batches: list[Batch], chunk_tokens: int, first_tokens: int | None = None) -> Iterator[list[int]]:
    """Consecutive batch indices whose padded tokens add up to at most `chunk_tokens` (the first chunk: at most
    `first_tokens`, if given); at least one batch each."""
    current: list[int] = []
    total, limit = 0, first_tokens or chunk_tokens
    for i, batch in enumerate(batches):
        size = batch.shape[0] * batch.shape[1]
        if current and total + size > limit:
            yield current
            current, total, limit = [], 0, chunk_tokens
        current.append(i)
        total += size
    if current:
        yield current


def count_chunks(batches: list[Batch], chunk_tokens: int, first_tokens: int | None = None) -> int:
    return sum(1 for _ in chunks(batches, chunk_tokens, first_tokens))


def _leading_tokens(batches: list[Batch], tokens: int) -> int:
    """The padded tokens of the fewest leading batches that hold at least `tokens` (all of them if none do): a
    first chunk of exactly those batches."""
    total = 0
    for batch in batches:
        if total >= tokens:
            break
        total += batch.shape[0] * batch.shape[1]
    return total


def _even_chunk_tokens(batches: list[Batch], tokens: int, total: int, largest: int) -> int:
    """A chunk size of at most `tokens` that cuts the batches (`total` padded tokens, the largest batch `largest`)
    into as few chunks as `tokens` does, of about equal size. Streamed, each chunk is a pass over the weights, and a
    chunk computes while the next block is read: as large as memory allows, the last chunk got the remainder, too
    small to hide its reads (the 30B run at 1/3 of the weights: 88% and 12% of the tokens, 23 s blocked on storage
    in its second pass). Every chunk the greedy cut closes holds more than (this size - the largest batch) = the
    mean, so there are no more chunks than before."""
    n = count_chunks(batches, tokens)
    return min(tokens, -(-total // n) + largest)


# A run with a journal writes each finished chunk to it; resident chunks are kept to about this many seconds.
JOURNAL_INTERVAL_S = 30.0
# Without a measured rate: about 30 s of SmolLM2-135M FP32 on 2 CPU cores (faster machines just journal more often).
JOURNAL_DEFAULT_TOKENS = 24_576


def journal_chunk_tokens(seconds_per_token: float | None) -> int:
    """The resident chunk that takes about JOURNAL_INTERVAL_S at the measured rate (calib.json), else the default."""
    if not seconds_per_token or seconds_per_token <= 0:
        return JOURNAL_DEFAULT_TOKENS
    return max(1, int(JOURNAL_INTERVAL_S / seconds_per_token))


@dataclass(frozen=True)
class Pacing:
    """What sizes resident chunks besides memory: calib's measured rates (None where not measured) and whether a
    run journal wants finished chunks on disk every JOURNAL_INTERVAL_S or so."""

    seconds_per_token: float | None = None  # one padded token through the whole model
    read_bytes_per_s: float | None = None  # the storage the engines are read from
    journal: bool = False

    def journal_tokens(self) -> int | None:
        """The resident chunk's cap with a journal (about JOURNAL_INTERVAL_S of compute); none without one."""
        return journal_chunk_tokens(self.seconds_per_token) if self.journal else None

    def covering_tokens(self, read_bytes: int) -> int:
        """Padded tokens whose compute takes COVER_MARGIN x as long as reading `read_bytes` once; 0 without both
        rates."""
        if min(self.seconds_per_token or 0, self.read_bytes_per_s or 0) <= 0:
            return 0
        return math.ceil(COVER_MARGIN * read_bytes / self.read_bytes_per_s / self.seconds_per_token)


# A resident run's first chunk computes this much longer than the reads it hides take at calib's rates. At 1.0 the
# 30B run of 2026-12-03 waited 6.5 s on storage, its reads 7% below calib's rate (1.71 against 1.85 GB/s); at 1.3
# the next run waited 1.0 s (gpu_steps/llama30b_2026-12-03_pad32.json, gpu_llama30b.json; another machine).
COVER_MARGIN = 1.3


# How a budget too small for the largest engine is met when the engines do not merge layers (else: see plan_memory)
FEWER_LAYERS_PER_BLOCK = "export with fewer layers per block"


def plan_memory(manifest: Manifest, batches: list[Batch], budget_bytes: int, chunk_tokens: int | None = None,
                prefetch_depth: int = 1, pacing: Pacing = Pacing(), spill: bool = False) -> MemoryPlan:
    """The plan for an engines directory: its blocks' streamed bytes and its always-resident engine types. Where
    the engines merge layers and one-layer engines would read the weights fewer times under this budget (more of
    the chunk's activations fit beside two smaller engines), the plan says so in its hint: calib merges layers
    without knowing a run's budget (the 7B shape at 1/6 of its weights: 3 passes with 2 layers an engine)."""
    merged = int(manifest.inputs.get("layers_per_engine") or 1)
    smaller = (f"build engines of one layer (these merge {merged}, calib's choice: `make engines LAYERS_PER_ENGINE=1`, "
               "or `ce-build --layers-per-engine 1` on the same export)" if merged > 1 else FEWER_LAYERS_PER_BLOCK)
    sizes = ModelSizes(manifest.model, manifest.dtype, [engine_bytes(b) for b in manifest.blocks],
                       manifest.shared_engine_bytes)
    plan = plan_from_sizes(sizes, batches, budget_bytes, chunk_tokens, prefetch_depth, pacing, smaller, spill)
    if merged > 1 and not plan.resident:
        try:
            single = plan_from_sizes(dataclasses.replace(sizes, block_bytes=_one_layer_bytes(manifest.blocks)),
                                     batches, budget_bytes, chunk_tokens, prefetch_depth, pacing, smaller, spill)
        except UserError:  # smaller engines fit wherever larger ones do; no hint rather than a wrong error
            return plan
        if single.passes < plan.passes:
            plan = dataclasses.replace(plan, hint=f"engines of one layer would read the weights {single.passes} "
                                                  f"time(s) instead of {plan.passes} under this budget: {smaller}")
    return plan


def _one_layer_bytes(blocks: tuple[EngineBlock, ...]) -> list[int]:
    """The blocks' streamed bytes as engines of one layer would hold them: a merged block's split evenly."""
    out = []
    for block in blocks:
        layers = block.spec.last_layer - block.spec.first_layer if block.spec.kind == "layers" else 1
        out += [engine_bytes(block) // layers] * layers
    return out


@dataclass(frozen=True)
class ModelSizes:
    """What the planner needs to know of a model: its shape and precision, the bytes of each block's engine
    (or weights file) that streams, and the bytes that stay resident whatever the budget (shared engine types)."""

    model: ModelSpec
    dtype: str
    block_bytes: list[int]
    resident_bytes: int = 0


def spill_crossings(block: int, blocks: int) -> int:
    """How often block `block` of `blocks` moves a chunk's hidden states through the disk on the third tier: read
    back before it (all but the embed block) and written after it (all but the head). The planner weighs the bytes,
    `ce-predict` the seconds, both from this."""
    return (block > 0) + (block < blocks - 1)


def plan_from_sizes(sizes: ModelSizes, batches: list[Batch], budget_bytes: int, chunk_tokens: int | None = None,
                    prefetch_depth: int = 1, pacing: Pacing = Pacing(),
                    smaller_engines: str = FEWER_LAYERS_PER_BLOCK, spill: bool = False) -> MemoryPlan:
    """Choose residency, chunk sizes and activation tier for `budget_bytes`; `chunk_tokens` caps every chunk.

    `pacing` matters only when every engine stays resident, where a chunk costs no read: with a journal, chunks
    are cut to about JOURNAL_INTERVAL_S of compute so that finished work reaches the disk that often; the first
    chunk, which overlaps the one read of every engine, grows (as memory allows) until its compute covers it.
    Streamed, a chunk's hidden states stay in memory unless chunks that small would read the weights more often
    than spilling every hidden state to disk and back costs in storage traffic (the third tier: one pass).
    `spill` asks for the third tier whatever the budget (`ce-run --spill`): engines streamed, hidden states on disk."""
    streamed = sum(sizes.block_bytes)
    model = streamed + sizes.resident_bytes
    per_token = activation_bytes_per_token(sizes.model, sizes.dtype)
    hidden_bytes = sizes.model.hidden_size * dtype_bytes(sizes.dtype)
    all_tokens = sum(b.shape[0] * b.shape[1] for b in batches)
    largest_batch = max(b.shape[0] * b.shape[1] for b in batches)
    working = max(working_bytes(sizes.model, sizes.dtype, b) for b in batches)
    cap = chunk_tokens or all_tokens
    largest_block = max(sizes.block_bytes)

    def fitting(tokens: int) -> int:
        """A chunk size within the cap that still takes the largest batch."""
        return max(largest_batch, min(tokens, cap))

    def chunked(resident: bool, engines_held: int, activations: str, tokens: int, first: int = 0) -> MemoryPlan:
        tokens = fitting(tokens)
        first = max(tokens, min(first, cap))
        n = count_chunks(batches, tokens, first)
        held = min(first, all_tokens) * per_token if activations == "memory" else 2 * largest_batch * hidden_bytes
        return MemoryPlan(
            budget_bytes=budget_bytes, model_bytes=model, resident=resident, chunk_tokens=tokens,
            first_chunk_tokens=first, chunks=n,
            bytes_to_read=model if resident else sizes.resident_bytes + streamed * n, activations=activations,
            peak_bytes=engines_held + held, slack_bytes=working, prefetch_depth=prefetch_depth,
        )

    room_resident = budget_bytes - model
    if not spill and room_resident >= largest_batch * per_token:
        room = room_resident // per_token
        first = min(room, _leading_tokens(batches, pacing.covering_tokens(model)))
        return chunked(True, model, "memory", min(room, pacing.journal_tokens() or all_tokens), first)
    streaming_engines = sizes.resident_bytes + (1 + prefetch_depth) * largest_block
    room_streaming = budget_bytes - streaming_engines
    in_flight = 2 * largest_batch * hidden_bytes  # the batch read from its file and the one written back
    spilled = chunked(False, streaming_engines, "disk", all_tokens) if room_streaming >= in_flight else None
    if not spill and room_streaming >= largest_batch * per_token:
        even = _even_chunk_tokens(batches, fitting(room_streaming // per_token), all_tokens, largest_batch)
        in_memory = chunked(False, streaming_engines, "memory", even)
        # a pass over the weights per chunk, against one pass plus every hidden state written and read back
        blocks = len(sizes.block_bytes)
        spill_bytes = all_tokens * hidden_bytes * sum(spill_crossings(k, blocks) for k in range(blocks))
        if spilled is None or in_memory.bytes_to_read <= spilled.bytes_to_read + spill_bytes:
            return in_memory
    if spilled is not None:
        return spilled
    needed = streaming_engines + in_flight
    raise UserError(
        f"--memory-budget {budget_bytes / 2**20:.2f} MiB is too small: the largest engine ({largest_block / 2**20:.2f} MiB) "
        f"with {prefetch_depth} read ahead and one batch of activations need {needed / 2**20:.2f} MiB; raise the "
        f"budget, lower --tokens-per-batch, or {smaller_engines}"
    )
