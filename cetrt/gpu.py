"""What GPU this machine has, for refusing engines built for another one.

TensorRT engines run only on the compute capability they were built for. torch (already a dependency) answers
without initialising more than CUDA's device query; no GPU or a CPU-only torch gives None.
Usage: `gpu = current_gpu()`; `gpu.compute_capability` is a string such as "8.7".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str
    memory_bytes: int


def current_gpu() -> Gpu | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    return Gpu(name=props.name, compute_capability=f"{major}.{minor}", memory_bytes=props.total_memory)


def device_memory_bytes(device: str) -> int:
    """The memory engines and activations share on `device`: the GPU's, else the machine's RAM."""
    from cetrt.options import machine_memory

    gpu = current_gpu() if device == "cuda" else None
    return gpu.memory_bytes if gpu else (machine_memory() or 8 << 30)
