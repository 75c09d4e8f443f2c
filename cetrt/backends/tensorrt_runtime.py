"""A TensorRT engine as a Session: deserialized from bytes already read, run on CUDA with named tensors.

One execution context per engine; per batch it picks the optimization profile that covers the input shapes,
sets each input's shape and every tensor's address, and enqueues `execute_async_v3` on torch's current CUDA
stream. Buffers are torch CUDA tensors the runner owns: hidden states stay on the GPU from block to block,
and only the head's outputs are copied to the host (`to_host`).
Cannot run on this workplace's machines (no full TensorRT; TensorRT-RTX's runtime refuses 8.7 and 9.0):
tests check its API use against tensorrt_rtx and its refusals, not its execution.
Usage: `session = TensorRTSession(trt, "tensorrt", source, target)`; `outputs = session.run(feeds)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cetrt.backends.base import EngineSource, Session
from cetrt.errors import UserError
from cetrt.gpu import current_gpu
from cetrt.spec import Target


def _torch_dtypes(trt, torch) -> dict:
    return {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }


def check_gpu_matches(target: Target, flavor: str) -> None:
    gpu = current_gpu()
    if gpu is None:
        raise UserError(f"{flavor} engines run on a CUDA GPU, and this machine has none (or torch has no CUDA)")
    if gpu.compute_capability != target.compute_capability:
        raise UserError(
            f"these engines were built for {target.name} (compute capability {target.compute_capability}), but this "
            f"GPU is {gpu.name} ({gpu.compute_capability}); rebuild them here with `make engines TARGET=...`"
        )


class TensorRTSession(Session):
    def __init__(self, trt, flavor: str, source: EngineSource, target: Target):
        import torch

        check_gpu_matches(target, flavor)
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(source.read_bytes())
        if engine is None:
            raise UserError(
                f"{source.path}: {flavor} {trt.__version__} cannot load this engine (corrupt, or built by another "
                "TensorRT version or for another GPU); rebuild it on this device with `make engines`"
            )
        self.runtime, self.engine = runtime, engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = _torch_dtypes(trt, torch)
        self.dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        self.profile = 0

    def _profile_for(self, shapes: dict[str, tuple]) -> int:
        for index in range(self.engine.num_optimization_profiles):
            ranges = {n: self.engine.get_tensor_profile_shape(n, index) for n in self.inputs}
            if all(all(lo <= d <= hi for d, lo, hi in zip(shapes[n], ranges[n][0], ranges[n][2])) for n in self.inputs):
                return index
        bounds = {n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in self.inputs}
        raise UserError(f"input shapes {shapes} fit none of the engine's {self.engine.num_optimization_profiles} "
                        f"optimization profiles (first: [min, opt, max] {bounds}); rebuild with a larger MAX_LENGTH")

    def _on_device(self, name: str, value: Any):
        torch = self.torch
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.to(device="cuda", dtype=self.dtypes[name], non_blocking=True).contiguous()

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        stream = torch.cuda.current_stream().cuda_stream
        tensors = {n: self._on_device(n, feeds[n]) for n in self.inputs}
        profile = self._profile_for({n: tuple(t.shape) for n, t in tensors.items()})
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, stream)
            self.profile = profile
        for name, tensor in tensors.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outputs

    def to_host(self, value: Any) -> np.ndarray:
        return value.cpu().numpy()  # synchronises with the stream the engine ran on

    def upload(self, name: str, array: np.ndarray) -> Any:
        return self._on_device(name, array)

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
