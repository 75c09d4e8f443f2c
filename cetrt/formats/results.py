"""results.json: the one writer of a run's results (per item and the metrics), read by benchmarks and tests.

Written atomically; if the named place fails (disk full, removed directory), the results go to a fallback
file that the one-line error names, so a finished run is never lost. `ItemResult.from_json` reads an item
back exactly (the run journal keeps items in this form).
Usage: `write_results(path, results)`; `RunResults.to_json()`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cetrt.outputs import write_with_fallback

RESULTS_FORMAT = "cetrt-results"
RESULTS_VERSION = 1


@dataclass(frozen=True)
class ItemResult:
    ind: int | str  # as the dataset gives it
    label: int
    scores: tuple[float, ...]
    lengths: tuple[float, ...]
    greedy: tuple[bool, ...]  # every token of the ending was the argmax (the harness's is_greedy)

    @functools.cached_property  # asked for by the metrics, the journal and results.json
    def pred(self) -> int:
        return int(np.argmax(self.scores))

    @functools.cached_property
    def pred_norm(self) -> int:
        return int(np.argmax(np.asarray(self.scores) / np.asarray(self.lengths)))

    def to_json(self) -> dict:
        return {
            "ind": self.ind, "label": self.label, "scores": list(self.scores), "lengths": list(self.lengths),
            "pred": self.pred, "pred_norm": self.pred_norm, "greedy": list(self.greedy),
        }

    @classmethod
    def from_json(cls, data: dict) -> "ItemResult":
        return cls(ind=data["ind"], label=int(data["label"]), scores=tuple(float(x) for x in data["scores"]),
                   lengths=tuple(float(x) for x in data["lengths"]), greedy=tuple(bool(x) for x in data["greedy"]))


@dataclass
class RunResults:
    metrics: dict[str, float]
    items: list[ItemResult]
    model: str
    model_hash: str
    backend: str
    backend_version: str
    target: str
    dtype: str
    dataset: str
    tokenize_s: float
    load_s: float
    compute_s: float
    total_s: float  # wall time of the whole evaluation, tokenization included
    tokens: int  # real tokens fed to the model (packed, unpadded)
    padded_tokens: int
    batch_shapes: list[tuple[int, int]]
    extra: dict = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """The design's latency: everything but tokenization."""
        return self.total_s - self.tokenize_s

    def to_json(self) -> dict:
        return {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            **self.metrics,
            "n": len(self.items),
            "latency_s": round(self.latency_s, 4),
            "model": self.model,
            "model_hash": self.model_hash,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "target": self.target,
            "dtype": self.dtype,
            "dataset": self.dataset,
            "timings": {
                "tokenize_s": round(self.tokenize_s, 4),
                "load_s": round(self.load_s, 4),
                "compute_s": round(self.compute_s, 4),
                "total_s": round(self.total_s, 4),
            },
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "tokens_per_s": round(self.tokens / self.latency_s, 1) if self.latency_s > 0 else None,
            "batch_shapes": [list(s) for s in sorted(set(map(tuple, self.batch_shapes)))],
            **self.extra,
            "items": [item.to_json() for item in self.items],
        }


def write_results(path: Path, results: RunResults) -> None:
    write_with_fallback(Path(path), results_text(results.to_json()), f"results of {len(results.items)} items")


def results_text(data: dict) -> str:
    """The run's fields indented, then its items one compact line each: the same JSON as `indent=2` gives, but
    written by json's C encoder (which `indent` turns off) and one item a line to read or grep (10,042 items:
    `bench/host_steps.py`)."""
    head = {k: v for k, v in data.items() if k != "items"}
    items = "".join(("\n" if i == 0 else ",\n") + "    " + json.dumps(item) for i, item in enumerate(data["items"]))
    return json.dumps(head, indent=2)[:-2] + ',\n  "items": [' + items + ("\n  " if items else "") + "]\n}\n"
