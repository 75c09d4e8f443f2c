"""The schedule calib chooses, from made-up measurements whose answer is known.

`choose_schedule` takes the smallest batch within 95% of the best measured throughput (not the largest, not
the fastest when a smaller one is nearly as fast), and the chunk size from which one read ahead hides a
block's read: read time / compute time per token, computed here by hand.
"""

from __future__ import annotations

import pytest

from cetrt.calib.schedule import choose_schedule


def _measured(rates: dict[int, float], s_per_token: float = 2.0**-19, bytes_per_s: float = 2.0**30) -> dict:
    return {"storage": {"bytes_per_s": bytes_per_s},
            "compute": [{"tokens_per_batch": t, "flop_per_s": r, "s_per_token": s_per_token} for t, r in rates.items()]}


@pytest.mark.parametrize("rates, expected", [
    ({512: 1.0e9, 1024: 1.96e9, 2048: 2.0e9, 4096: 1.9e9}, 1024),  # 1024 and 4096 are within 95% of 2048's
    ({512: 1.0e9, 1024: 1.5e9, 2048: 3.0e9, 4096: 2.0e9}, 2048),  # only the best is near the best
    ({512: 4.0e9, 1024: 3.0e9, 2048: 2.0e9, 4096: 1.0e9}, 512),
    ({512: 1.0e9, 1024: 2.0e9, 2048: 3.0e9, 4096: 4.0e9}, 4096),
])
def test_the_smallest_batch_near_the_best_throughput_is_chosen(rates, expected):
    schedule = choose_schedule(_measured(rates), largest_block_bytes=2**20)
    assert schedule["tokens_per_batch"] == expected
    assert schedule["prefetch_depth"] == 1


def test_reads_hide_from_the_chunk_size_computed_by_hand():
    # reading 1 MiB at 1 GiB/s takes 2^-10 s; a token computes in 2^-19 s: 512 tokens cover a read
    schedule = choose_schedule(_measured({1024: 1e9}), largest_block_bytes=2**20)
    assert schedule["hide_reads_from_chunk_tokens"] == 513
    slower = choose_schedule(_measured({1024: 1e9}, bytes_per_s=2.0**28), largest_block_bytes=2**20)
    assert slower["hide_reads_from_chunk_tokens"] == 2049
