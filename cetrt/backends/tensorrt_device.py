"""Where a TensorRT session's tensors live and in what order its work runs: the device seam of the runtime.

A `Device` hands out buffers (tensors whose `data_ptr()` TensorRT reads and writes), copies host arrays in
and results out, names the stream every enqueue goes to, keeps buffers alive until the stream has finished
with them, and owns the one device-memory buffer that every execution context of a run shares (TensorRT's
user-managed context memory: contexts of one stream never run at the same time). `CudaDevice` is the real
one: torch CUDA tensors on its own `torch.cuda.Stream` (not the legacy default stream, which makes TensorRT
add synchronisations), inputs copied from page-locked memory. Tests supply a host device with the same
methods (tests/backends/fake_tensorrt.py).
Inputs: host arrays or tensors and torch dtypes; outputs: tensors, addresses, host arrays.
Usage: `device = CudaDevice()`; `tensor = device.to_device(array, torch.float16)`; `device.to_host(tensor)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np


class Device(ABC):
    """The operations the runtime needs, all ordered on one stream."""

    def __init__(self):
        self._scratch: Any = None  # the shared context memory (a uint8 tensor), grown on demand

    @property
    @abstractmethod
    def stream_handle(self) -> int:
        """The stream TensorRT enqueues on (a cudaStream_t as an integer)."""

    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype) -> Any:
        """An uninitialised buffer, allocated in stream order."""

    @abstractmethod
    def to_device(self, value: Any, dtype) -> Any:
        """`value` (host array or tensor) as a buffer of `dtype` on the device; one already there is returned as is."""

    @abstractmethod
    def copy(self, destination: Any, source: Any) -> None:
        """Copy a buffer into another of the same shape, in stream order."""

    @abstractmethod
    def to_host(self, value: Any) -> np.ndarray:
        """A buffer's contents on the host, once the stream has produced them."""

    @abstractmethod
    def hold_until_done(self, objects: list) -> None:
        """Keep `objects` (buffers, contexts) alive until the work enqueued so far has finished."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for the stream; everything held for it is released."""

    @abstractmethod
    def capture(self, enqueue: Callable[[], None]) -> Callable[[], None]:
        """Record what `enqueue` puts on the stream once (a CUDA graph); the result replays it on the stream."""

    @staticmethod
    def address(buffer: Any) -> int:
        return buffer.data_ptr()

    def scratch(self, nbytes: int) -> int:
        """The address of the shared context memory, at least `nbytes` long; growing it retires the old buffer
        only once the stream is done with it."""
        if self._scratch is None or self._scratch.numel() < nbytes:
            if self._scratch is not None:
                self.hold_until_done([self._scratch])
            self._scratch = self.empty((max(nbytes, 1),), self.byte_dtype)
        return self.address(self._scratch)

    @property
    def scratch_bytes(self) -> int:
        """Bytes of the shared context memory now allocated (what the memory meter should count)."""
        return 0 if self._scratch is None else int(self._scratch.numel())

    @property
    @abstractmethod
    def byte_dtype(self):
        """The dtype of a raw byte buffer."""


class CudaDevice(Device):
    """torch CUDA tensors on a dedicated stream; host inputs go through page-locked memory."""

    def __init__(self):
        import torch

        super().__init__()
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self._held: list[tuple[Any, list]] = []  # (event recorded after the work, objects it needs)

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    @property
    def byte_dtype(self):
        return self.torch.uint8

    def empty(self, shape, dtype):
        with self.torch.cuda.stream(self.stream):  # the caching allocator reuses it in this stream's order
            return self.torch.empty(tuple(shape), dtype=dtype, device="cuda")

    def to_device(self, value, dtype):
        torch = self.torch
        if isinstance(value, torch.Tensor) and value.is_cuda and value.dtype == dtype and value.is_contiguous():
            return value
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not value.is_cuda:
            value = value.to(dtype).contiguous().pin_memory()  # the async copy's source must be page-locked
        with torch.cuda.stream(self.stream):
            result = value.to(device="cuda", dtype=dtype, non_blocking=True).contiguous()
        self.hold_until_done([value])
        return result

    def copy(self, destination, source) -> None:
        with self.torch.cuda.stream(self.stream):
            destination.copy_(source, non_blocking=True)

    def to_host(self, value) -> np.ndarray:
        self.stream.synchronize()
        return value.cpu().numpy()

    def hold_until_done(self, objects: list) -> None:
        self._held = [(event, held) for event, held in self._held if not event.query()]
        event = self.torch.cuda.Event()
        event.record(self.stream)
        self._held.append((event, objects))

    def synchronize(self) -> None:
        self.stream.synchronize()
        self._held.clear()

    def capture(self, enqueue):
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        # thread-local capture: TensorRT's own calls from other threads must not invalidate it
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            enqueue()

        def replay() -> None:
            with torch.cuda.stream(self.stream):
                graph.replay()

        return replay
