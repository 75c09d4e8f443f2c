"""TensorRT build failure paths, through the fake TensorRT's builder: the timing cache and the logger.

A timing cache TensorRT cannot create or attach must not stop a build; a stale (another version) or truncated
`timing.cache` is discarded and rebuilt; nothing after the engine is written may fail on the cache. The logger
keeps what is needed and drops the verbose flood itself (`min_severity` does nothing on an ILogger subclass).
Also: the version features, and optimization profiles no larger than the batches the plan makes.
"""

from __future__ import annotations

import fake_tensorrt
import numpy as np
import pytest
import tensorrt_rtx

from cetrt.backends.tensorrt import LAYERS_MESSAGE, capturing_logger
from cetrt.backends.tensorrt_features import Features
from cetrt.backends.tensorrt_timing_cache import TIMING_CACHE
from cetrt.build.engines import BuildOptions, build_engines
from cetrt.formats.manifest import read_manifest
from cetrt.workload.hellaswag import Doc
from cetrt.workload.packing import make_batches, pack
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import EncodedDoc

from conftest import PLAN


def build(zoo, out):
    return build_engines(BuildOptions(onnx_dir=zoo.onnx("llama"), out_dir=out, backend="tensorrt",
                                      target="orin-agx-32gb", weights="inputs", shape_plan=PLAN))


def cache_version(path) -> str:
    cache = fake_tensorrt.read_timing_cache(path.read_bytes())
    assert cache is not None, "the timing cache on disk is not a whole cache"
    return cache.version


def test_a_fresh_build_writes_a_timing_cache_every_type_shares(zoo, tmp_path, fake_trt):
    manifest = build(zoo, tmp_path)
    assert all(t.details["timing_cache"] for t in manifest.engine_types)
    assert cache_version(tmp_path / TIMING_CACHE) == fake_tensorrt.__version__
    assert fake_tensorrt.read_timing_cache((tmp_path / TIMING_CACHE).read_bytes()).entries > 0
    assert all(t.details["context_memory_bytes"] > 0 for t in manifest.engine_types)


@pytest.mark.parametrize("damage", ["another version", "truncated", "garbage"])
def test_an_unusable_timing_cache_is_discarded_and_rebuilt(zoo, tmp_path, fake_trt, monkeypatch, damage):
    cache = tmp_path / TIMING_CACHE
    if damage == "another version":
        monkeypatch.setattr(fake_tensorrt, "__version__", "10.2.0.19")
        cache.write_bytes(fake_tensorrt.TimingCache("10.2.0.19", 7).serialize())
        monkeypatch.setattr(fake_tensorrt, "__version__", "10.3.0.26")
    elif damage == "truncated":
        cache.write_bytes(fake_tensorrt.TimingCache(fake_tensorrt.__version__, 7).serialize()[:-5])
    else:
        cache.write_bytes(b"\x00" * 100)
    manifest = build(zoo, tmp_path)
    assert all(t.details["timing_cache"] for t in manifest.engine_types)
    assert cache_version(cache) == fake_tensorrt.__version__
    recorded = read_manifest(tmp_path)  # the build finished and was recorded
    assert [t.files for t in recorded.engine_types] == [t.files for t in manifest.engine_types]


@pytest.mark.parametrize("failure", ["create_timing_cache", "set_timing_cache", "get_timing_cache"])
def test_a_timing_cache_tensorrt_will_not_give_never_stops_the_build(zoo, tmp_path, fake_trt, monkeypatch, failure):
    old = fake_tensorrt.TimingCache(fake_tensorrt.__version__, 3).serialize()
    (tmp_path / TIMING_CACHE).write_bytes(old)
    refusal = {"create_timing_cache": lambda config, blob: None,
               "set_timing_cache": lambda config, cache, ignore_mismatch: False,
               "get_timing_cache": lambda config: None}[failure]
    monkeypatch.setattr(fake_tensorrt.BuilderConfig, failure, refusal)
    manifest = build(zoo, tmp_path)
    runtime = fake_tensorrt.Runtime(fake_tensorrt.Logger())
    assert all(runtime.deserialize_cuda_engine((tmp_path / t.files[0].path).read_bytes()) is not None
               for t in manifest.engine_types)  # every engine was written whole
    attached = failure == "get_timing_cache"  # attached, but TensorRT hands nothing back to save
    assert all(t.details["timing_cache"] is attached for t in manifest.engine_types)
    if failure == "get_timing_cache":
        assert (tmp_path / TIMING_CACHE).read_bytes() == old  # left as it was, not truncated
    else:
        assert not (tmp_path / TIMING_CACHE).exists()  # the unusable cache is gone, none was written
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("trt", [fake_tensorrt, tensorrt_rtx], ids=["fake", "tensorrt_rtx"])
def test_the_logger_filters_in_log_and_keeps_the_layer_list(trt):
    severity = trt.ILogger.Severity
    logger = capturing_logger(trt, severity.WARNING, keep=lambda message: message.startswith(LAYERS_MESSAGE))
    logger.log(severity.VERBOSE, "Tactic 0x1 took 2 ms")
    logger.log(severity.INFO, "Loaded engine")
    logger.log(severity.VERBOSE, LAYERS_MESSAGE + "\nName: gemm, LayerType: gemm")
    logger.log(severity.WARNING, "using the default stream")
    logger.log(severity.ERROR, "out of memory")
    assert [m for _, m in logger.messages] == [LAYERS_MESSAGE + "\nName: gemm, LayerType: gemm",
                                               "using the default stream", "out of memory"]
    assert logger.errors() == ["out of memory"]


def test_features_follow_the_version():
    old, jetpack, newest = (Features.of("tensorrt", v) for v in ("10.0.1.6", "10.3.0.26", "11.1.0.5"))
    assert not old.user_managed_context_memory and not old.device_memory_v2
    assert jetpack.user_managed_context_memory and jetpack.device_memory_v2 and jetpack.timing_cache
    assert newest.device_memory_v2 and newest.cuda_graph_capture
    rtx = Features.of("tensorrt-rtx", tensorrt_rtx.__version__)
    assert rtx.user_managed_context_memory and not rtx.timing_cache and not rtx.cuda_graph_capture


@pytest.mark.parametrize("tokens, max_length, splits", [(4096, 512, (128, 256)), (2048, 384, (128, 256)),
                                                        (1024, 512, (64, 100, 256))])
def test_no_profile_admits_more_tokens_than_a_batch_and_every_batch_fits_one(tokens, max_length, splits):
    plan = ShapePlan(tokens_per_batch=tokens, max_length=max_length, length_splits=splits)
    for profile in plan.profiles():
        assert profile.max["B"] * profile.max["L"] <= max(tokens, profile.max["L"])
    rng = np.random.default_rng(tokens)
    doc = Doc(ind=0, activity_label="a", ctx_a="b", ctx_b="", endings=("w", "x", "y", "z"), label=0)
    rows = [pack(i, EncodedDoc(doc=doc, context=tuple(range(int(n))), continuations=((1, 2), (3,), (4, 5), (6,)),
                               lengths=(1.0,) * 4)) for i, n in enumerate(rng.integers(1, max_length - 4, 300))]
    batches = make_batches(rows, plan)
    for batch in batches:
        plan.profile_for(len(batch.rows), batch.length, batch.slots)  # raises if outside every profile
    assert max(len(b.rows) * b.length for b in batches) <= tokens
