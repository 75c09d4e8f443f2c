"""What the installed TensorRT offers, decided from its flavor and version (never by probing attributes).

Inputs: the flavor ("tensorrt" or "tensorrt-rtx") and the module's `__version__`. Output: a frozen `Features`.
TensorRT 10.3 (JetPack 6) is the oldest full TensorRT supported; 11.x removes `device_memory_size` (DESIGN.md).
Usage: `features = Features.of("tensorrt", trt.__version__)`; `if features.user_managed_context_memory: ...`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from cetrt.errors import MissingDependency

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL = {
    "tensorrt": "TensorRT ships with JetPack 6 (python3-libnvinfer) or NVIDIA's installers; it cannot be pip-installed here",
    "tensorrt-rtx": "pip install tensorrt-rtx",
}


def import_trt(flavor: str):
    try:
        return importlib.import_module(MODULES[flavor])
    except ImportError:
        raise MissingDependency(MODULES[flavor], INSTALL[flavor], f"the {flavor} backend") from None


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True)
class Features:
    """What this TensorRT offers, by flavor and version."""

    flavor: str
    version: tuple[int, ...]
    timing_cache: bool  # full TensorRT; TensorRT-RTX made timing caches no-ops (deprecated in RTX 1.2)
    compute_capability_targeting: bool  # TensorRT-RTX builds for a named compute capability without that GPU
    # USER_MANAGED contexts sized for the shapes set (update_device_memory_size_for_shapes, set_device_memory
    # with a size, device_memory_size_v2): TensorRT 10.1 on; every TensorRT-RTX
    user_managed_context_memory: bool
    device_memory_v2: bool  # engine.device_memory_size_v2 (10.1 on); 11.x has only this one
    cuda_graph_capture: bool  # execute_async_v3 may be captured in a CUDA graph (full TensorRT 10.x on)

    @classmethod
    def of(cls, flavor: str, version: str) -> "Features":
        rtx = flavor == "tensorrt-rtx"
        numbers = parse_version(version)
        sized_memory = rtx or numbers >= (10, 1)
        return cls(flavor=flavor, version=numbers, timing_cache=not rtx, compute_capability_targeting=rtx,
                   user_managed_context_memory=sized_memory, device_memory_v2=sized_memory,
                   cuda_graph_capture=not rtx and numbers >= (10, 0))
