"""The printed summary of a run: metrics, latency and its parts, and, when streaming, storage and memory.

Usage: `print(summary_table(results))`.
"""

from __future__ import annotations

from cetrt.formats.results import RunResults


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
