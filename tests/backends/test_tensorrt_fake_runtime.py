"""The TensorRT runtime's logic, run through the fake TensorRT (tests/backends/fake_tensorrt.py) on CPU.

Scores through fake TensorRT sessions must equal the ONNX Runtime backend's on the same export, in both weight
layouts, resident and streamed; and each piece of the runtime's API use must do what TensorRT requires:
the profile that covers the batch, shapes and addresses checked, buffers alive until the stream is done,
one shared context memory sized for the shapes, refusals as one UserError naming the engine.
"""

from __future__ import annotations

import gc

import fake_tensorrt
import numpy as np
import pytest
import torch

from cetrt.backends.base import EngineSource
from cetrt.backends.tensorrt_runtime import TensorRTSession
from cetrt.errors import UserError
from cetrt.formats.manifest import read_manifest
from cetrt.gpu import Gpu
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import GREEDY, HIDDEN, HIDDEN_OUT, INPUT_IDS, LOGPROBS, POSITION_IDS, SEGMENT_IDS

from conftest import ORIN, PLAN, fake_backend

N_DOCS = 10


def scores(run) -> np.ndarray:
    return np.array([s for item in run.items for s in item.scores])


def run_fake(engines, hellaswag_path, **options):
    return evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=N_DOCS, progress=False, **options))


@pytest.fixture(scope="module")
def ort_scores(zoo, hellaswag_path):
    return {arch: scores(evaluate(RunOptions(engines=zoo.engines(arch), dataset=str(hellaswag_path), limit=N_DOCS,
                                             progress=False)))
            for arch in ("llama", "opt")}


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("layout", ["inside", "inputs"])
def test_fake_tensorrt_scores_like_onnx_runtime(fake_engines, fake_trt, ort_scores, hellaswag_path, arch, layout):
    engines = fake_engines(arch, layout)
    fake_tensorrt.executions.clear()
    run = run_fake(engines, hellaswag_path)
    np.testing.assert_allclose(scores(run), ort_scores[arch], atol=1e-4, rtol=0)
    blocks = len(read_manifest(engines).blocks)
    assert len(fake_tensorrt.executions) > blocks and len(fake_tensorrt.executions) % blocks == 0  # every batch, every block
    assert len({e["profile"] for e in fake_tensorrt.executions}) >= 2  # the documents' rows span profiles
    # every block took its context memory from the backend's one shared buffer, replaced only to grow it
    backend, largest, address = fake_trt[-1], 0, None
    for execution in fake_tensorrt.executions:
        if execution["scratch"][0] != address:
            assert execution["needed"] > largest, "a new context memory buffer without a need to grow"
            address = execution["scratch"][0]
        largest = max(largest, execution["needed"])
        assert execution["scratch"][1] >= execution["needed"]
    assert backend.context_memory_bytes == largest


def test_streamed_run_closes_sessions_and_scores_the_same(fake_engines, fake_trt, ort_scores, hellaswag_path):
    engines = fake_engines("llama", "inside")
    model = sum(b.files[0].bytes for b in read_manifest(engines).blocks)
    run = run_fake(engines, hellaswag_path, memory_budget=str(model - 1), chunk_tokens=1024)  # a byte short: streamed
    assert not run.extra["streaming"]["plan"]["resident"] and run.extra["streaming"]["plan"]["chunks"] > 1
    np.testing.assert_allclose(scores(run), ort_scores["llama"], atol=1e-4, rtol=0)


@pytest.fixture
def llama_session(fake_engines, fake_trt):
    """A session of the tiny LLaMA's first layer block (weights inside), and its manifest."""
    engines = fake_engines("llama", "inside")
    manifest = read_manifest(engines)
    block = next(b for b in manifest.blocks if b.spec.kind == "layers")
    backend = fake_backend()
    session = backend.load(EngineSource(path=engines / block.files[0].path), manifest.target, None)
    yield session, backend
    session.close()


def layer_feeds(batch: int, length: int, hidden: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {HIDDEN: rng.standard_normal((batch, length, hidden)).astype(np.float32),
            POSITION_IDS: np.tile(np.arange(length, dtype=np.int64), (batch, 1)),
            SEGMENT_IDS: np.zeros((batch, length), dtype=np.int32)}  # all context: causal


def test_each_batch_runs_in_the_profile_that_covers_it(llama_session):
    session, backend = llama_session
    for length, batch in ((96, 3), (160, 2), (384, 1), (64, 8)):
        fake_tensorrt.executions.clear()
        out = session.run(layer_feeds(batch, length))
        session.to_host(out[HIDDEN_OUT])
        expected = PLAN.profile_for(batch, length, length)
        assert session.profile == expected == fake_tensorrt.executions[-1]["profile"]
        assert fake_tensorrt.executions[-1]["shapes"][HIDDEN_OUT] == (batch, length, 64)


def test_dtypes_follow_the_engine_fp16_hidden_int64_ids_bool_greedy(fake_engines, fake_trt):
    engines = fake_engines("llama", "inside", "float16")
    manifest = read_manifest(engines)
    backend = fake_backend()
    embed, head = manifest.blocks[0], manifest.blocks[-1]
    first = backend.load(EngineSource(path=engines / embed.files[0].path), manifest.target, None)
    hidden = first.run({INPUT_IDS: np.array([[1, 2, 3, 4]], dtype=np.int32)})[HIDDEN_OUT]  # int32 in: cast to int64
    assert hidden.dtype == torch.float16 and first.dtypes[INPUT_IDS] == torch.int64
    last = backend.load(EngineSource(path=engines / head.files[0].path), manifest.target, None)
    out = last.run({HIDDEN: hidden, "score_index": np.array([[0, 1, 2]]), "target_ids": np.array([[5, 6, 7]])})
    assert out[LOGPROBS].dtype == torch.float32 and out[GREEDY].dtype == torch.bool
    logprobs = last.to_host(out[LOGPROBS])
    assert logprobs.shape == (1, 3) and np.all(logprobs <= 0) and np.isfinite(logprobs).all()


def test_buffers_stay_alive_until_the_stream_is_done(llama_session, monkeypatch):
    session, backend = llama_session
    out = session.run(layer_feeds(2, 64))  # the numpy feeds are copied in; the copies are dropped by run()
    gc.collect()
    assert session.to_host(out[HIDDEN_OUT]).shape == (2, 64, 64)  # the queued work found its buffers alive
    # the control: a runtime that does not hold them would have the work read freed memory
    monkeypatch.setattr(fake_tensorrt.HostDevice, "hold_until_done", lambda self, objects: None)
    out = session.run(layer_feeds(2, 64))
    gc.collect()
    with pytest.raises(fake_tensorrt.FakeTensorRTError, match="freed before the stream finished"):
        session.to_host(out[HIDDEN_OUT])


def test_uploaded_inputs_are_reused_without_another_copy(fake_engines, fake_trt):
    """What the executor's upload-once relies on: an uploaded input feeds every block, with no copy per run."""
    engines = fake_engines("llama", "inside")
    manifest = read_manifest(engines)
    backend = fake_backend()
    layers = [backend.load(EngineSource(path=engines / b.files[0].path), manifest.target, None)
              for b in manifest.blocks if b.spec.kind == "layers"]
    feeds = layer_feeds(2, 64)
    uploaded = {name: layers[0].upload(name, array) for name, array in feeds.items()}
    device = backend.shared_device()
    copies = device.uploads
    hidden = uploaded[HIDDEN]
    for session in layers:
        hidden = session.run({**uploaded, HIDDEN: hidden})[HIDDEN_OUT]
    assert device.uploads == copies  # no input was copied again
    reference = feeds[HIDDEN]
    for session in layers:
        reference = session.to_host(session.run({**feeds, HIDDEN: reference})[HIDDEN_OUT])
    np.testing.assert_array_equal(layers[-1].to_host(hidden), reference)
    assert device.uploads == copies + 3 * len(layers)  # numpy feeds are copied at every run


def test_context_memory_is_sized_for_the_shapes_and_shared(llama_session):
    session, backend = llama_session
    small = layer_feeds(1, 32)
    session.to_host(session.run(small)[HIDDEN_OUT])
    after_small = backend.context_memory_bytes
    assert after_small == fake_tensorrt.executions[-1]["needed"] < session.context_memory_bytes
    session.to_host(session.run(layer_feeds(4, 128))[HIDDEN_OUT])
    assert backend.context_memory_bytes == fake_tensorrt.executions[-1]["needed"] > after_small
    session.to_host(session.run(small)[HIDDEN_OUT])  # smaller shapes reuse the grown buffer
    assert backend.context_memory_bytes == fake_tensorrt.executions[-2]["needed"]
    assert session.context_memory_bytes == max(256 + 8 * sum(int(np.prod(s[2])) for s in shapes)
                                               for shapes in ([session.engine.get_tensor_profile_shape(n, p)
                                                               for n in session.inputs]
                                                              for p in range(3)))


def test_cuda_graphs_replay_per_shape_set_and_score_the_same(llama_session, fake_engines, monkeypatch):
    session, _ = llama_session
    engines = fake_engines("llama", "inside")
    manifest = read_manifest(engines)
    block = next(b for b in manifest.blocks if b.spec.kind == "layers")
    graphed = fake_backend(cuda_graphs=True).load(EngineSource(path=engines / block.files[0].path), manifest.target, None)
    assert graphed.graphs is not None
    for length, seed in ((64, 0), (64, 1), (96, 2), (64, 3)):
        feeds = layer_feeds(2, length, seed=seed)
        expected = session.to_host(session.run(feeds)[HIDDEN_OUT])
        np.testing.assert_array_equal(graphed.to_host(graphed.run(feeds)[HIDDEN_OUT]), expected)
    assert (graphed.graphs.captures, graphed.graphs.replays) == (2, 2)
    # never for an engine type whose weights are inputs, nor for a TensorRT without capture
    typed = read_manifest(fake_engines("llama", "inputs"))
    kind = typed.engine_types[1]
    path = fake_engines("llama", "inputs") / kind.files[0].path
    assert fake_backend(cuda_graphs=True).load(EngineSource(path=path), typed.target, None).graphs is None


# ---- refusals ----------------------------------------------------------------------------------------------------

def engine_source(fake_engines) -> tuple[EngineSource, object]:
    engines = fake_engines("llama", "inside")
    manifest = read_manifest(engines)
    return EngineSource(path=engines / manifest.blocks[1].files[0].path), manifest.target


def test_an_engine_of_another_tensorrt_version_is_refused(fake_engines, fake_trt, monkeypatch):
    source, target = engine_source(fake_engines)
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.4.0.1")
    with pytest.raises(UserError, match=r"block_001\.engine: tensorrt 10\.4\.0\.1 cannot load this engine"):
        TensorRTSession(fake_tensorrt, "tensorrt", source, target, devices=fake_tensorrt.HostDevice)
    truncated = EngineSource(path=source.path, read=lambda: source.path.read_bytes()[:-10])
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.3.0.26")
    with pytest.raises(UserError, match="cannot load this engine"):
        TensorRTSession(fake_tensorrt, "tensorrt", truncated, target, devices=fake_tensorrt.HostDevice)


def test_an_engine_for_another_gpu_is_refused_before_any_device_work(fake_engines, monkeypatch):
    source, target = engine_source(fake_engines)
    monkeypatch.setattr("cetrt.backends.tensorrt_runtime.current_gpu", lambda: Gpu("NVIDIA H200", "9.0", 141 << 30))
    made = []
    with pytest.raises(UserError, match=r"compute capability 8\.7\), but this GPU is NVIDIA H200 \(9\.0\)"):
        TensorRTSession(fake_tensorrt, "tensorrt", source, target, devices=lambda: made.append(1))
    assert made == []


@pytest.mark.parametrize("version, attribute", [("10.3.0.26", "device_memory_size_v2"), ("10.0.1.26", "device_memory_size")])
def test_no_execution_context_is_one_user_error_with_the_memory_needed(fake_engines, fake_trt, monkeypatch, version,
                                                                      attribute):
    source, target = engine_source(fake_engines)
    monkeypatch.setattr(fake_tensorrt, "__version__", version)
    data = source.path.read_bytes().replace(b"\"version\": \"10.3.0.26\"", f"\"version\": \"{version}\"".encode())  # same length
    strategies = []

    def out_of_memory(engine, strategy=fake_tensorrt.ExecutionContextAllocationStrategy.STATIC):
        strategies.append(strategy)
        return None

    monkeypatch.setattr(fake_tensorrt.Engine, "create_execution_context", out_of_memory)
    monkeypatch.setattr(fake_tensorrt.Engine, attribute, property(lambda engine: 3 * 2**20))
    with pytest.raises(UserError, match=r"block_001\.engine: tensorrt could not create an execution context .* "
                                        r"needs 3\.0 MiB of device memory"):
        TensorRTSession(fake_tensorrt, "tensorrt", EngineSource(path=source.path, read=lambda: data), target,
                        devices=fake_tensorrt.HostDevice)
    user_managed = fake_tensorrt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert strategies == ([user_managed] if version.startswith("10.3") else [fake_tensorrt.ExecutionContextAllocationStrategy.STATIC])


def test_shapes_outside_every_profile_quote_min_opt_max(llama_session):
    session, _ = llama_session
    with pytest.raises(UserError, match=r"fit none of the engine's 3 optimization profiles .*\[min, opt, max\] "
                                        r"\[\(1, 1, 64\), \(8, 128, 64\), \(8, 128, 64\)\]"):
        session.run(layer_feeds(1, 416))


def test_refused_shapes_and_addresses_are_user_errors_quoting_the_profile(llama_session, monkeypatch):
    session, _ = llama_session
    monkeypatch.setattr(fake_tensorrt.ExecutionContext, "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(UserError, match=r"refused input \w+ of shape \(2, 64.*profile 0 \(.*\[min, opt, max\]"):
        session.run(layer_feeds(2, 64))
    monkeypatch.undo()
    monkeypatch.setattr(fake_tensorrt.ExecutionContext, "set_tensor_address", lambda self, name, address: False)
    with pytest.raises(UserError, match=r"refused the address of \w+ .*\[min, opt, max\]"):
        session.run(layer_feeds(2, 64))
    monkeypatch.undo()
    monkeypatch.setattr(fake_tensorrt.ExecutionContext, "execute_async_v3", lambda self, stream: False)
    with pytest.raises(UserError, match="could not enqueue this engine"):
        session.run(layer_feeds(2, 64))


def test_the_orin_gpu_stand_in_is_what_the_target_names(fake_engines):
    _, target = engine_source(fake_engines)
    assert ORIN.compute_capability == target.compute_capability == "8.7"
