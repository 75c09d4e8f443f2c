"""Buffers the runner owns, on the device a backend computes on: one compute stream, one copy stream, page-locked
host memory for reads, and copies that overlap compute. `device_for(kind)` gives the process's one device.

On a GPU that is cuda-bindings' (cetrt/backends/cuda_device.py): no torch, whose import and CUDA start-up cost
a GPU run 4-7 s. The torch device here serves the CPU's I/O binding, `CETRT_DEVICE=torch`, and machines where
cuda-bindings cannot talk to the driver (a CUDA 12 driver with cuda-bindings 13: the warning names the fix; or
no libcuda where cuda-bindings looks). With neither, a CUDA run is a UserError that names the CPU target.
Backends bind these tensors by address (ONNX Runtime's I/O binding, TensorRT's `set_tensor_address`), so the
hidden states never leave the device between blocks, every allocation comes from a caching pool (no
cudaMalloc/cudaFree, which synchronise, per run), and nothing waits on the host until the head's outputs are
read. Uploads run on the copy stream from page-locked memory; the compute stream waits for them with an
event, so block i+1's weights travel while block i computes; the host buffer is kept until its copy is done.
On the CPU the same calls are plain tensors and no streams. On cuda-bindings' device ONNX Runtime runs on our
compute stream (`user_compute_stream`) without a sync per run, so the host queues block after block: on the H200,
7B resident compute 6.9 s against 7.9 s with ORT on its own stream, same scores (bench/results/gpu_stream_ab_7b.json).
On torch's device it keeps its own stream and synchronises at the end of each run, and uploads are waited for
before the run that reads them: shared with torch's stream, ORT 1.31.1 failed in `cudaFreeHost` (CUDA error 800)
on the H200 machine. `CETRT_SHARED_STREAM=0`/`1` overrides either default; `CETRT_PINNED=0` reads into plain memory.
Usage: `device = device_for("cuda")`; `t = device.upload(array)`; `t.data_ptr()`; `device.host_buffers()` for
the reader.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import deque

import numpy as np

from cetrt.errors import UserError
from cetrt.storage import HostBuffers
from cetrt.switches import choice, switch

_ALIGN = 4096


@functools.lru_cache(maxsize=None)
def _torch():
    import torch

    return torch


def device_for(kind: str):
    """The process's device for `kind` ("cpu" or "cuda"), made on first use; CETRT_DEVICE=torch or cuda-bindings
    picks one (unset: cuda-bindings, torch where that is missing)."""
    return _device_for(kind, choice("CETRT_DEVICE", ("torch", "cuda-bindings"), default="cuda-bindings"))


def first_element(value):
    """A one-element view of a device tensor (a DeviceArray or torch's), to wait for the run that wrote it."""
    return value.first() if hasattr(value, "first") else value.reshape(-1)[:1]


_MAKING_DEVICE = threading.Lock()  # the preparing thread and the main thread may ask for it at once


def _device_for(kind: str, wanted: str):
    with _MAKING_DEVICE:
        return _make_device(kind, wanted)


@functools.lru_cache(maxsize=None)
def _make_device(kind: str, wanted: str):
    pinned = kind == "cuda" and switch("CETRT_PINNED", default=True)
    if kind != "cuda" or wanted == "torch":
        return _torch_device(kind, _shares_stream(kind, False), pinned)
    from cetrt.backends.cuda_device import CudaRuntimeDevice, CudaUnavailable

    try:
        return CudaRuntimeDevice(shared_stream=_shares_stream(kind, True), pinned=pinned)
    except CudaUnavailable as why:
        device = _torch_device(kind, _shares_stream(kind, False), pinned, why)
        warnings.warn(f"cetrt: GPU buffers through torch, which starts 4-7 s slower: {why}"
                      + (f"; {why.fix}" if why.fix else ""), stacklevel=4)
        return device


def _shares_stream(kind: str, default: bool) -> bool:
    """Whether ONNX Runtime runs on the device's compute stream (module docstring): CETRT_SHARED_STREAM, else
    `default` (cuda-bindings' device on, torch's off)."""
    return kind == "cuda" and switch("CETRT_SHARED_STREAM", default)


def _torch_device(kind: str, shared: bool, pinned: bool, why: Exception | None = None) -> "Device":
    """torch's device; where torch has no GPU either (no CUDA build, or no GPU), a UserError naming the CPU target,
    with what cuda-bindings said (`why`) if it was asked first."""
    try:
        return Device(kind, shared_stream=shared, pinned=pinned)
    except (RuntimeError, AssertionError) as e:  # torch without CUDA ("not compiled with CUDA"), or no GPU
        tried = f"cuda-bindings: {why}; torch: " if why is not None else ""
        raise UserError(f"no usable CUDA GPU for these engines ({tried}{str(e)[:120]}); engines built for a CUDA "
                        "target need one: export and build for --target cpu to run here") from None


class Device:
    """torch's streams and caching allocator, and the upload bookkeeping shared by every session."""

    name = "torch"

    def __init__(self, kind: str, shared_stream: bool = False, pinned: bool = False):
        torch = _torch()
        self.kind = kind  # "cpu" or "cuda"
        self.torch_device = torch.device(kind)
        if kind == "cuda":
            self.compute = torch.cuda.Stream()
            self.copy = torch.cuda.Stream()
            torch.cuda.set_stream(self.compute)  # torch's allocations for outputs go with the compute stream
        else:
            self.compute = self.copy = None
        self._in_flight: deque = deque()  # (event, host array) of copies not yet known to be done
        self._in_flight_lock = threading.RLock()  # uploads come from the executor and a resident store's loader
        # the backend runs on our compute stream (else on its own, and every upload is waited for at once)
        self.shared_stream, self.pinned = shared_stream, pinned

    @property
    def stream_handle(self) -> int:
        return self.compute.cuda_stream if self.compute is not None else 0

    def upload(self, array):
        """`array` on the device. On a GPU the copy runs on the copy stream and the compute stream waits for it;
        from page-locked memory it returns before the copy is done."""
        torch = _torch()
        if isinstance(array, torch.Tensor) and array.device.type == self.kind:
            return array
        with warnings.catch_warnings():  # weights are read-only views of the reader's buffer: never written
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(np.ascontiguousarray(array))
        if self.kind == "cpu":
            return host
        self._forget_finished()
        with torch.cuda.stream(self.copy):
            moved = host.to(self.torch_device, non_blocking=True)
            done = self.copy.record_event()
        if not self.shared_stream:
            done.synchronize()
        self.compute.wait_event(done)
        moved.record_stream(self.compute)  # its memory is reused only after the compute stream used it
        with self._in_flight_lock:
            self._in_flight.append((done, host))  # the host bytes must outlive the copy
        return moved

    def _forget_finished(self) -> None:
        with self._in_flight_lock:
            while self._in_flight and self._in_flight[0][0].query():
                self._in_flight.popleft()

    def empty(self, shape, dtype: np.dtype):
        torch = _torch()
        return torch.empty(tuple(shape), dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype,
                           device=self.torch_device)

    def to_host(self, tensor) -> np.ndarray:
        return tensor.cpu().numpy() if self.kind == "cuda" else tensor.numpy()

    def to_device(self, tensor, index: int):
        """A copy on GPU `index` (the multi-GPU pipeline's hand-over; untested: no such machine here)."""
        torch = _torch()
        torch.cuda.set_device(index)
        return tensor.to(torch.device("cuda", index), non_blocking=True)

    def host_buffer_stats(self) -> dict | None:
        """None: torch's caching host allocator keeps no counts of its own for the run."""
        return None

    def host_buffers(self) -> HostBuffers:
        """The reader's buffers; nothing made ahead: torch's caching host allocator keeps what it makes."""
        return HostBuffers(self.host_buffer)

    def host_buffer(self, nbytes: int) -> memoryview | None:
        """Page-locked host memory for the reader to read into (a GPU copies from it asynchronously), aligned
        for O_DIRECT; None where plain memory is as good (the CPU) or the memory cannot be aligned."""
        if not self.pinned:
            return None
        torch = _torch()
        block = torch.empty(nbytes + _ALIGN, dtype=torch.uint8, pin_memory=True)
        skip = -block.data_ptr() % _ALIGN
        return memoryview(block[skip : skip + nbytes].numpy())

    def synchronize(self) -> None:
        if self.compute is not None:
            self.compute.synchronize()
            self.copy.synchronize()
            with self._in_flight_lock:
                self._in_flight.clear()
