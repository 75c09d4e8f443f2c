"""The work a run does, counted as ce-run would make it: documents, harness tokenization, packing, batches.

Tokenization, packing and batching are the runner's own (`encode_docs`, `pack`, `make_batches`, as
runner/evaluate.py calls them), done once per candidate batch size. Only the tokenizer differs from a real run:
the model's own is not at hand, so a named offline one counts the tokens (calib/presets.py).
Usage: `work = count_workload(dataset, limit=2000, tokenizer_dir=None, sizes=(2048, 4096), max_positions=2048)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cetrt.calib.presets import OTHER_TOKENIZERS_NOTE, load_counting_tokenizer
from cetrt.workload.hellaswag import default_dataset, load_docs
from cetrt.workload.packing import Batch, make_batches, pack_docs
from cetrt.workload.shapes import ShapePlan

__all__ = ["Workload", "count_workload", "default_dataset"]  # default_dataset: the core's one default


@dataclass(frozen=True)
class Workload:
    dataset: str
    items: int
    tokenizer: str  # names the tokenizer that counted
    tokenizer_note: str
    batches: dict[int, list[Batch]]  # by tokens per batch

    def tokens(self) -> int:
        return sum(b.tokens for b in next(iter(self.batches.values())))


def count_workload(dataset: str | None, limit: int | None, tokenizer_dir: str | Path | None, sizes: tuple[int, ...],
                   max_positions: int, tokenizer=None) -> Workload:
    """Batches for each tokens-per-batch in `sizes`; `tokenizer` (an object) overrides `tokenizer_dir`."""
    dataset = dataset or default_dataset()
    docs = load_docs(dataset, limit)
    if tokenizer is None:
        tokenizer, described = load_counting_tokenizer(tokenizer_dir)
    else:
        described = f"{type(tokenizer).__name__} ({len(tokenizer):,} tokens, given by the caller)"
    rows = pack_docs(tokenizer, docs)
    batches = {size: make_batches(rows, ShapePlan(tokens_per_batch=size), max_positions) for size in sizes}
    return Workload(dataset=str(dataset), items=len(docs), tokenizer=described, tokenizer_note=OTHER_TOKENIZERS_NOTE,
                    batches=batches)
