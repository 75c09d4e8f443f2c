"""A TensorRT engine as a Session: deserialized from bytes already read, run with named tensors on a `Device`.

One execution context per engine. Per run: the optimization profile that covers the input shapes (switched
on the device's stream), each input's shape, the context memory for those shapes, every tensor's address,
then `execute_async_v3` on the device's own stream; inputs and outputs are held until the stream is done
with them. Every TensorRT return value is checked; a refusal names the engine and quotes the profile's
[min, opt, max]. Contexts use user-managed memory where the version has it (`Features`): sized for the shapes
actually set and taken from the device's one shared buffer, so a run with a context per block holds one
buffer, not one per context sized for the profiles' largest corner. `context_memory_bytes` is what a context
of this engine can need at most (for the planner).
Buffers are the device's: on a GPU, hidden states stay there from block to block and only the head's outputs
are copied to the host (`to_host`); `upload` gives a buffer the caller can reuse across runs and blocks.
Runs here against tests/backends/fake_tensorrt.py (no full TensorRT, no GPU on this workplace's machines).
Usage: `session = TensorRTSession(trt, "tensorrt", source, target)`; `outputs = session.run(feeds)`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cetrt.backends.base import EngineSource, Session
from cetrt.backends.tensorrt_device import CudaDevice, Device
from cetrt.backends.tensorrt_features import Features
from cetrt.backends.tensorrt_graphs import GraphedRuns
from cetrt.errors import UserError
from cetrt.gpu import current_gpu
from cetrt.spec import Target

MiB = 2**20


def torch_dtypes(trt) -> dict:
    import torch

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


def engine_context_memory(engine, features: Features) -> int:
    """The most device memory one execution context of `engine` needs (over all its profiles)."""
    return int(engine.device_memory_size_v2 if features.device_memory_v2 else engine.device_memory_size)


class TensorRTSession(Session):
    def __init__(self, trt, flavor: str, source: EngineSource, target: Target,
                 devices: Callable[[], Device] = CudaDevice, cuda_graphs: bool = False):
        check_gpu_matches(target, flavor)
        self.trt, self.path = trt, source.path
        self.features = Features.of(flavor, trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(source.read_bytes())
        if engine is None:
            raise UserError(
                f"{source.path}: {flavor} {trt.__version__} cannot load this engine (corrupt, or built by another "
                "TensorRT version or for another GPU); rebuild it on this device with `make engines`"
            )
        self.runtime, self.engine = runtime, engine
        self.device = devices()
        self.context = self._create_context(flavor)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = torch_dtypes(trt)
        unknown = {n: engine.get_tensor_dtype(n) for n in names if engine.get_tensor_dtype(n) not in dtypes}
        if unknown:
            raise UserError(f"{source.path}: tensors of types this runtime does not handle: {unknown}; "
                            "re-export the model with the standard block I/O")
        self.dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        self.profile = 0  # a new context starts on profile 0
        graphable = cuda_graphs and self.features.cuda_graph_capture and not self._has_weight_inputs()
        self.graphs = GraphedRuns(self.device) if graphable else None
        if self.graphs is not None and self.features.user_managed_context_memory:
            self.device.scratch(self.context_memory_bytes)  # a graph keeps its address: never grow it later

    def _create_context(self, flavor: str):
        trt, engine = self.trt, self.engine
        if self.features.user_managed_context_memory:
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            context = engine.create_execution_context()
        if context is None:
            needed = engine_context_memory(engine, self.features)
            raise UserError(
                f"{self.path}: {flavor} could not create an execution context for this engine, which needs "
                f"{needed / MiB:.1f} MiB of device memory for its largest optimization profile beside the engines "
                "and activations already held; lower --memory-budget or --tokens-per-batch, or rebuild with "
                "WEIGHTS=inputs or a smaller MAX_LENGTH"
            )
        return context

    def _has_weight_inputs(self) -> bool:
        """Inputs whose shape is fixed in every profile: the weights of an engine type (weights as inputs)."""
        return any(all(len(set(self._ranges(n, p))) == 1 for p in range(self.engine.num_optimization_profiles))
                   for n in self.inputs)

    @property
    def context_memory_bytes(self) -> int:
        """Device memory a context of this engine needs at most; with user-managed memory it comes from the
        device's shared buffer (count the largest over a run's engines once), else each context holds its own."""
        return engine_context_memory(self.engine, self.features)

    def _ranges(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, profile)]

    def _describe_profile(self, profile: int) -> str:
        return "; ".join(f"{n} [min, opt, max] {self._ranges(n, profile)}" for n in self.inputs)

    def _profile_for(self, shapes: dict[str, tuple]) -> int:
        for index in range(self.engine.num_optimization_profiles):
            ranges = {n: self._ranges(n, index) for n in self.inputs}
            if all(len(shapes[n]) == len(ranges[n][0]) and
                   all(lo <= d <= hi for d, lo, hi in zip(shapes[n], ranges[n][0], ranges[n][2])) for n in self.inputs):
                return index
        raise UserError(f"{self.path}: input shapes {shapes} fit none of the engine's "
                        f"{self.engine.num_optimization_profiles} optimization profiles (first: {self._describe_profile(0)}); "
                        "rebuild with a larger MAX_LENGTH, or run with the shape plan the engines were built for")

    def _set_shapes(self, shapes: dict[str, tuple]) -> None:
        profile = self._profile_for(shapes)
        if profile != self.profile:
            if not self.context.set_optimization_profile_async(profile, self.device.stream_handle):
                raise UserError(f"{self.path}: TensorRT refused to switch to optimization profile {profile}")
            self.profile = profile
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise UserError(f"{self.path}: TensorRT refused input {name} of shape {shape} in optimization profile "
                                f"{profile} ({self._describe_profile(profile)}); rebuild the engines for this shape plan")

    def _bind(self, name: str, buffer: Any) -> None:
        if not self.context.set_tensor_address(name, self.device.address(buffer)):
            raise UserError(f"{self.path}: TensorRT refused the address of {name} (shape {tuple(buffer.shape)}, "
                            f"optimization profile {self.profile}: {self._describe_profile(self.profile)})")

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise UserError(f"{self.path}: TensorRT could not infer the shape of output {name} ({shape}) from the "
                            "input shapes; the engine does not match this runtime's block I/O, rebuild it")
        return shape

    def _bind_context_memory(self) -> int:
        """User-managed memory for the shapes just set, from the shared buffer; returns its address (0: none)."""
        if not self.features.user_managed_context_memory:
            return 0
        size = int(self.context.update_device_memory_size_for_shapes())
        address = self.device.scratch(size)
        self.context.set_device_memory(address, self.device.scratch_bytes)
        return address

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        tensors = {n: self.device.to_device(feeds[n], self.dtypes[n]) for n in self.inputs}
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        self._set_shapes(shapes)
        memory = self._bind_context_memory()
        if self.graphs is not None:
            return self.graphs.run((self.profile, tuple(shapes.items()), memory), tensors, self._enqueue_into)
        outputs = self._enqueue_into(tensors)
        self.device.hold_until_done([*tensors.values(), *outputs.values()])
        return outputs

    def _enqueue_into(self, tensors: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Bind `tensors` and the outputs (fresh ones unless given), enqueue one execution; shapes and context
        memory are already set."""
        if outputs is None:
            outputs = {n: self.device.empty(self._output_shape(n), self.dtypes[n]) for n in self.outputs}
        for name, buffer in {**tensors, **outputs}.items():
            self._bind(name, buffer)
        if not self.context.execute_async_v3(self.device.stream_handle):
            raise UserError(f"{self.path}: TensorRT could not enqueue this engine (optimization profile {self.profile}, "
                            f"input shapes { {n: tuple(t.shape) for n, t in tensors.items()} })")
        return outputs

    def to_host(self, value: Any) -> np.ndarray:
        return self.device.to_host(value)

    def upload(self, name: str, array: np.ndarray) -> Any:
        """`array` on the device as input `name` expects it, from page-locked memory: keep it to feed it to
        every block of a chunk (and every engine with this input) without copying it again."""
        return self.device.to_device(array, self.dtypes[name])

    def close(self) -> None:
        """Drops the engine; the context and engine live on until the stream has finished their last run."""
        if self.context is not None:
            self.device.hold_until_done([self.context, self.engine, self.runtime])
        self.graphs = self.context = self.engine = self.runtime = None
