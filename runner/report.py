"""results.json (its one writer) and the printed summary of a run.

Usage: `write_results(path, results)`; `print(summary_table(results))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cetrt.files import write_json_atomic
from cetrt.runner.scoring import ItemResult

RESULTS_FORMAT = "cetrt-results"
RESULTS_VERSION = 1


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
    write_json_atomic(Path(path), results.to_json())


def summary_table(results: RunResults) -> str:
    m = results.metrics
    rows = [
        ("model", f"{results.model} ({results.dtype}, {results.backend} {results.backend_version}, target {results.target})"),
        ("items", f"{len(results.items)}"),
        ("acc", f"{m['acc']:.4f} ± {m['acc_stderr']:.4f}"),
        ("acc_norm", f"{m['acc_norm']:.4f} ± {m['acc_norm_stderr']:.4f}"),
        ("latency", f"{results.latency_s:.2f} s (load {results.load_s:.2f} s, compute {results.compute_s:.2f} s)"),
        ("tokenize", f"{results.tokenize_s:.2f} s (not in latency)"),
        ("tokens", f"{results.tokens} real, {results.padded_tokens} padded, in {len(results.batch_shapes)} batches"),
        ("throughput", f"{results.tokens / results.latency_s:,.0f} tokens/s" if results.latency_s > 0 else "-"),
    ]
    streaming = results.extra.get("streaming")
    if streaming:
        mib = 2**20
        rss = streaming["peak_rss_increase_bytes"]
        rows += [
            ("storage", f"{streaming['bytes_read'] / mib:,.1f} MiB read in {streaming['plan']['passes']} pass(es), "
                        f"{'O_DIRECT' if streaming['direct_io'] else 'through the page cache'}"),
            ("waiting", f"{streaming['blocked_on_storage_s']:.2f} s blocked on storage, overlap {streaming['overlap']:.1%}"),
            ("peak", f"{streaming['peak_held_bytes'] / mib:,.1f} MiB held (engines + activations), "
                     f"RSS +{rss / mib:,.1f} MiB" if rss is not None else "-"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
