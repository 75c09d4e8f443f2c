"""The schedule calib chooses, from made-up measurements whose answer is known.

`choose_schedule` takes the smallest batch within 95% of the best measured throughput (not the largest, not
the fastest when a smaller one is nearly as fast), and the chunk size from which one read ahead hides a
block's read: read time / compute time per token, computed here by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

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


def _merge(call_s: float, layer_s: float, block_bytes: int = 2**20, memory: int = 2**40) -> dict:
    return {"tokens_per_batch": 4096, "call_s": call_s, "layer_s": layer_s, "block_bytes": block_bytes,
            "layers_per_block": 1, "device_memory_bytes": memory}


def _layer_at(tokens: int, layer_s: float) -> dict:
    """Measurements whose chosen batch (the only one) is `tokens` tokens, through which a layer takes `layer_s`."""
    return _measured({tokens: 1e9}, s_per_token=layer_s / tokens)


@pytest.mark.parametrize("merge, layers, expected", [
    (_merge(1.3e-3, 5e-3), 32, 6),  # 1.3 ms a call, 5 ms a layer: 6 layers put the call under 5% (5.2 -> 6)
    (_merge(1.3e-3, 10e-3), 60, 3),  # a 30B layer at twice the time: 3
    (_merge(0.0, 10e-3), 60, 1),  # no measurable call cost: no merging
    (_merge(2e-3, 1e-3), 30, 30),  # launch-bound small model: all its layers, no more
    (_merge(2e-3, 1e-3, block_bytes=2**30, memory=2**35), 30, 2),  # 1/16 of 32 GiB holds 2 layers of 1 GiB
])
def test_layers_per_engine_from_the_measured_call_cost(merge, layers, expected):
    schedule = choose_schedule({**_layer_at(4096, merge["layer_s"]), "merge": merge}, largest_block_bytes=2**20,
                               num_layers=layers)
    assert schedule["layers_per_engine"] == expected
    assert "ms" in schedule["layers_per_engine_reason"]


def test_the_call_cost_is_weighed_against_a_layer_on_the_schedules_own_batches():
    """The 7B shape: a call of 0.4 ms is 13% of a 3 ms layer at calib's 4,096-token merge batches, but 3.5% of
    the 11.5 ms a layer takes on the 16,384-token batches the schedule chose: one layer an engine, not three."""
    merge = _merge(0.4e-3, 3e-3)
    small = choose_schedule({**_layer_at(4096, 3e-3), "merge": merge}, largest_block_bytes=2**20, num_layers=32)
    large = choose_schedule({**_layer_at(16384, 11.5e-3), "merge": merge}, largest_block_bytes=2**20, num_layers=32)
    assert (small["layers_per_engine"], large["layers_per_engine"]) == (3, 1)
    assert "11.50 ms at the schedule's 16,384" in large["layers_per_engine_reason"]


def test_no_merge_measurement_leaves_the_default():
    assert "layers_per_engine" not in choose_schedule(_measured({1024: 1e9}), largest_block_bytes=2**20)


def test_merged_rate_pays_the_call_once_per_engine():
    from cetrt.calib.rates import merged_rate

    row = {"tokens_per_batch": 4096, "flop_per_s": 1e12, "s_per_token": 6e-3 / 4096}  # 6 ms a call, 1 ms of it fixed
    merge = _merge(1e-3, 5e-3)
    assert merged_rate(row, merge, 1) == 1e12
    assert merged_rate(row, merge, 4) == pytest.approx(1e12 * 6 / (6 - 0.75))  # 3/4 of the call saved per layer


def test_rates_are_taken_at_sustained_clocks_where_calib_measured_them():
    """A GPU holds lower clocks under minutes of load than in calib's short timings (the H200's matmul rate fell
    16% within 3 s): where calib.json has a size's sustained time, its rate is scaled to it, and the source says so."""
    from cetrt.calib.rates import device_figures, merged_rate, sustained_rate
    from cetrt.spec import Target

    steady = {"tokens_per_batch": 4096, "flop_per_s": 1e12, "s_per_token": 1.8e-6}
    row = {**steady, "s_per_token_sustained": 2.07e-6}
    assert sustained_rate(steady) == 1e12
    assert sustained_rate(row) == pytest.approx(1e12 * 1.8 / 2.07)
    assert merged_rate(row, None, 1) == pytest.approx(1e12 * 1.8 / 2.07)
    calib = SimpleNamespace(measured={"target": "cpu", "compute": [row]}, schedule={},
                            seconds_per_layer_token=lambda: None)
    figures = device_figures(Target.from_name("cpu"), calib)
    assert figures.rates_sustained and figures.flop_per_s(4096)[0] == pytest.approx(1e12 * 1.8 / 2.07)
    assert "sustained clocks" in figures.flop_per_s(4096)[1]
    calib.measured["compute"] = [steady]
    assert not device_figures(Target.from_name("cpu"), calib).rates_sustained


def test_a_timed_run_brings_one_element_to_the_host_not_the_output():
    import numpy as np

    from cetrt.calib import schedule

    fetched = []

    class Session:
        def to_host(self, value):
            fetched.append(value.size)
            return value

    schedule._wait(Session(), {"hidden_out": np.zeros((4, 128, 64), dtype=np.float16)})
    assert fetched == [1]


def test_a_layer_too_fast_to_measure_merges_all_it_may():
    schedule = choose_schedule({**_measured({1024: 1e9}), "merge": _merge(1e-3, 0.0)}, largest_block_bytes=2**20,
                               num_layers=12)
    assert schedule["layers_per_engine"] == 12


def test_weights_are_bound_from_the_buffers_the_reader_reads_into():
    """calib times a bind from where the runner's reader leaves the weights (page-locked memory on a GPU)."""
    import numpy as np

    from cetrt.calib.schedule import _in_read_buffers
    from cetrt.storage import HostBuffers

    weights = {"w": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.ones(5, dtype=np.float32)}
    buffers = []

    def allocate(nbytes: int) -> memoryview:
        buffers.append(bytearray(nbytes))
        return memoryview(buffers[-1])

    placed = _in_read_buffers(weights, HostBuffers(allocate))
    assert len(buffers) == 2
    for name, array in weights.items():
        np.testing.assert_array_equal(placed[name], array)
        assert placed[name].dtype == array.dtype and not np.shares_memory(placed[name], array)
    assert bytes(buffers[0]) == weights["w"].tobytes()  # the copy lives in the reader's buffer
    assert _in_read_buffers(weights, None) is weights  # the CPU: plain memory, as the reader's


def test_each_batch_size_is_timed_in_sessions_of_its_own(tokenizer, hellaswag_path):
    """A run's sessions see one batch size only, so calib opens new ones for each size and closes them after:
    one session through every size measured larger batches at twice their per-token time on the H200."""
    from types import SimpleNamespace

    import numpy as np

    from cetrt.calib import schedule
    from cetrt.spec import HIDDEN, ModelSpec
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.packing import pack_docs

    made, open_now = [], []

    class Session:
        def __init__(self, kind):
            self.kind = kind
            made.append(kind)
            open_now.append(self)

        def upload(self, name, array):
            return array

        def run(self, feeds):
            return {"out": np.zeros(2)}

        def to_host(self, value):
            return value

        def close(self):
            open_now.remove(self)

    model = ModelSpec(architecture="llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                      intermediate_size=12, vocab_size=10, max_positions=2048, embed_dim=8)
    exported = SimpleNamespace(model=model, dtype="float32")
    block = SimpleNamespace(spec=SimpleNamespace(first_layer=0, last_layer=1, input_names=(HIDDEN,)))

    def make(kind):
        assert not [s for s in open_now if s.kind == kind], "a size's session opened while another size's is open"
        return Session(kind)

    rows = pack_docs(tokenizer, load_docs(str(hellaswag_path), 40))
    sessions = {"layers": (lambda: make("layers"), block), "head": (lambda: make("head"), block)}
    results = schedule._compute(sessions, exported, rows, (512, 1024))
    assert [r["tokens_per_batch"] for r in results] == [512, 1024]
    assert made == ["layers", "head"] * 2
    assert open_now == []
    assert not any("s_per_token_sustained" in r for r in results)  # the CPU: no sustained pass
    results = schedule._compute(sessions, exported, rows, (512,), sustain_s=1e-9)
    assert results[0]["s_per_token_sustained"] >= 0  # a GPU: recorded beside the steady rate


def test_the_sustained_pass_times_a_chunk_of_batches_after_heating_the_gpu(monkeypatch):
    """On a GPU calib times each size's batches back to back, as a run's chunk goes through a layer, after
    `sustain_s` seconds of the same work: the clocks a long run holds. A made-up clock: a run costs 1 ms for the
    first 10 ms of work (boost clocks), 1.25 ms after (power-capped)."""
    import numpy as np

    from cetrt.calib import schedule
    from cetrt.spec import HIDDEN

    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])

    class Session:
        def upload(self, name, array):
            return array

        def run(self, feeds):
            clock[0] += 1e-3 if clock[0] < 10e-3 else 1.25e-3
            return {"out": np.zeros(2)}

        def to_host(self, value):
            return value

    block = SimpleNamespace(spec=SimpleNamespace(input_names=(HIDDEN,)))
    session, one, other = Session(), {HIDDEN: np.zeros((2, 3))}, {HIDDEN: np.zeros((3, 2))}
    assert schedule._steady_run(session, block, one) == pytest.approx(1e-3)  # short: boost clocks
    clock[0] = 0.0
    assert schedule._sustained_pass(session, block, [one, other, one, other], 0.02) == pytest.approx(4 * 1.25e-3)


def test_calib_times_full_batches_of_each_size_typical_lengths_first(tokenizer, hellaswag_path):
    """calib's batches of each size are full, as a run's are: cut from its few hundred items as a run cuts them
    they held about half their size, and 8,192 and 16,384 cut the same batches (on the H200, two merged layers
    timed 2.5x one on such batches, and calib merged 1 layer of SmolLM2 where it had merged 30)."""
    from types import SimpleNamespace

    from cetrt.calib.schedule import _typical_first
    from cetrt.families import presets
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.packing import pack_docs

    exported = SimpleNamespace(model=presets()["llama-7b"], dtype="float16")
    rows = pack_docs(tokenizer, load_docs(str(hellaswag_path), 200))
    lengths = sorted(-(-r.length // 8) * 8 for r in rows)
    middle = lengths[len(lengths) // 2]
    for size in (2048, 8192, 16384):
        batches = _typical_first(rows, size, exported)
        assert batches[0].length == middle
        distances = [abs(b.length - middle) for b in batches]
        assert distances == sorted(distances)  # typical lengths first
        for batch in batches:
            assert size - batch.length < batch.shape[0] * batch.shape[1] <= size  # full: no room for another row
            assert {id(r) for r in batch.rows} <= {id(r) for r in rows}  # the items' own rows, repeated


def test_a_batch_is_timed_at_its_steady_rate_not_on_its_first_runs(monkeypatch):
    """The first runs of a new batch shape cost more (kernel choice; on the H200 with ONNX Runtime's CUDA
    provider the second run still did: calib measured the 30B layer at 2.42 us a token at 4,096 tokens on second
    runs and 1.80 on later ones, and chose a smaller batch). A run sees each shape again in every layer, so calib
    times the steady runs: the fastest of two after two untimed. A made-up clock makes a shape's runs take 1 s,
    1 s, 5 ms, 3 ms."""
    from types import SimpleNamespace

    import numpy as np

    from cetrt.calib import schedule
    from cetrt.spec import HIDDEN

    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])

    class Session:
        runs = 0

        def upload(self, name, array):
            return array

        def run(self, feeds):
            Session.runs += 1
            clock[0] += (1.0, 1.0, 5e-3, 3e-3)[Session.runs - 1]
            return {"out": np.zeros(2)}

        def to_host(self, value):
            return value

    block = SimpleNamespace(spec=SimpleNamespace(input_names=(HIDDEN,)))
    assert schedule._steady_run(Session(), block, {HIDDEN: np.zeros(3)}) == pytest.approx(3e-3)
    assert Session.runs == 4
