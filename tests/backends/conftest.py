"""Fixtures for the TensorRT backend through the fake TensorRT: engines built and run as on the Orin, with no GPU.

`fake_trt` puts the fake where the backend registry, the build and the run look for TensorRT and pretends the
GPU is the Orin's; `fake_engines(arch, layout)` builds the tiny model's engines once per module.
"""

from __future__ import annotations

import fake_tensorrt
import pytest

from cetrt.backends.tensorrt import TensorRTBackend
from cetrt.build.engines import BuildOptions, build_engines
from cetrt.gpu import Gpu
from cetrt.workload.shapes import ShapePlan

ORIN = Gpu("Orin (fake)", "8.7", 32 << 30)
PLAN = ShapePlan(tokens_per_batch=1024, max_length=384)  # three profiles: L in [1, 128], [129, 256], [257, 384]


def fake_backend(**kwargs) -> TensorRTBackend:
    return TensorRTBackend("tensorrt", module=fake_tensorrt, devices=fake_tensorrt.HostDevice, **kwargs)


def patch_fake(monkeypatch, **backend_kwargs) -> list[TensorRTBackend]:
    """Route `get_backend("tensorrt")` in build and run to fake backends; returns the backends made, in order."""
    made: list[TensorRTBackend] = []

    def get_backend(name):
        assert name == "tensorrt", name
        made.append(fake_backend(**backend_kwargs))
        return made[-1]

    monkeypatch.setattr("cetrt.build.engines.get_backend", get_backend)
    monkeypatch.setattr("cetrt.runner.evaluate.get_backend", get_backend)
    monkeypatch.setattr("cetrt.backends.tensorrt.current_gpu", lambda: ORIN)
    monkeypatch.setattr("cetrt.backends.tensorrt_runtime.current_gpu", lambda: ORIN)
    return made


@pytest.fixture
def fake_trt(monkeypatch):
    return patch_fake(monkeypatch)


@pytest.fixture(scope="module")
def fake_engines(zoo, tmp_path_factory):
    built = {}

    def get(arch: str, layout: str, dtype: str = "float32"):
        key = (arch, layout, dtype)
        if key not in built:
            out = tmp_path_factory.mktemp(f"fake-trt-{arch}-{layout}-{dtype}")
            with pytest.MonkeyPatch.context() as monkeypatch:
                patch_fake(monkeypatch)
                build_engines(BuildOptions(onnx_dir=zoo.onnx(arch, dtype), out_dir=out, backend="tensorrt",
                                           target="orin-agx-32gb", weights=layout, shape_plan=PLAN))
            built[key] = out
        return built[key]

    return get
