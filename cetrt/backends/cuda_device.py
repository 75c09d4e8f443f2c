"""The runner's GPU buffers without torch: CUDA's runtime through NVIDIA's cuda-bindings.

ce-run on ONNX Runtime's CUDA provider needs device buffers, page-locked host memory, two streams and events;
torch gave them at 3.9-7.0 s of import and CUDA start-up a run (bench/results/run_anatomy_llama7b.json), the
largest fixed cost of a GPU run. cuda-bindings imports in about 0.1 s and ONNX Runtime starts the CUDA context
it needs anyway. Allocations come from CUDA's stream-ordered pool (cudaMallocAsync on the compute stream, the
pool told to keep what is freed, as torch's caching allocator does), so a run's thousands of outputs never call
cudaMalloc or cudaFree. Same contract as the torch device (cetrt/backends/device.py): uploads on the copy
stream, waited for by the compute stream, host bytes kept until their copy is done.
On an integrated GPU (the Orin: CPU and GPU share one DRAM) an upload from the reader's page-locked buffers is
no copy at all: kernels read the mapped buffer itself, which stays out of the pool until the compute stream is
past its last use, so a weight is held once, not twice (`CETRT_ZERO_COPY=1`/`0` forces either way; written for
the Orin and tested only by forcing it on a discrete GPU, where each read crosses PCIe).
Usage: `device = CudaRuntimeDevice()`; `a = device.upload(array)`; `a.data_ptr()`; `device.to_host(a)`;
`device.host_buffers()` for the reader.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cetrt.errors import UserError
from cetrt.storage import HostBuffers
from cetrt.switches import parse

_ALIGN = 4096
_KEEP_ALL = (1 << 64) - 1  # the pool's release threshold: never hand freed memory back to the driver mid-run


class CudaUnavailable(Exception):
    """cuda-bindings is missing or cannot talk to this machine's driver: the reason, and what would fix it."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(reason)
        self.fix = fix


def _runtime():
    try:
        from cuda.bindings import driver, runtime
    except ImportError as e:
        raise CudaUnavailable(f"cuda-bindings is not installed ({e})") from None
    return runtime, driver


class _Cuda:
    """The CUDA runtime calls, each checked: cuda-bindings returns (error, values...) instead of raising."""

    def __init__(self):
        self.rt, self.driver = _runtime()
        try:
            driver_version = self.driver.cuDriverGetVersion()[1]
        except Exception as e:  # cuda-pathfinder's DynamicLibNotFoundError: no libcuda where it looks
            raise CudaUnavailable(f"no NVIDIA driver library where cuda-bindings looks ({str(e)[:100]})") from None
        runtime_version = self.rt.cudaRuntimeGetVersion()[1]
        if driver_version // 1000 < runtime_version // 1000:
            raise CudaUnavailable(f"cuda-bindings {runtime_version // 1000}.x needs a CUDA {runtime_version // 1000} "
                                  f"driver; this driver is CUDA {driver_version // 1000}.{driver_version % 1000 // 10}",
                                  fix="install the cuda-bindings of the driver's CUDA major version (pip install "
                                      "'cuda-bindings==12.*' for a CUDA 12 driver, as on JetPack 6)")

    def __call__(self, name: str, *args):
        result = getattr(self.rt, name)(*args)
        error, values = result[0], result[1:]
        if error != self.rt.cudaError_t.cudaSuccess:
            text = self.rt.cudaGetErrorString(error)[1].decode()
            if error == self.rt.cudaError_t.cudaErrorMemoryAllocation:
                raise UserError(f"the GPU is out of memory ({name}: {text}); give ce-run a smaller --memory-budget")
            raise CudaUnavailable(f"{name}: {text} ({error.name})")
        return values[0] if len(values) == 1 else values


class DeviceArray:
    """A tensor in device memory: address, shape and dtype (what I/O binding needs), returned to the pool on the
    compute stream when the last reference goes."""

    __slots__ = ("_address", "shape", "dtype", "nbytes", "device_index", "_owner", "__weakref__")

    def __init__(self, address: int, shape: tuple, dtype: np.dtype, device_index: int, release=None, owner=None):
        self._address, self.shape, self.dtype, self.device_index = address, tuple(shape), np.dtype(dtype), device_index
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._owner = owner  # a view keeps the array it views alive; only the owner frees
        if release is not None:
            finalizer = weakref.finalize(self, release, address)
            finalizer.atexit = False  # at exit the context goes with the process

    def data_ptr(self) -> int:
        return self._address

    def first(self) -> "DeviceArray":
        """A one-element view of the first element: what calib brings to the host to wait for a run."""
        return DeviceArray(self._address, (1,), self.dtype, self.device_index, owner=self)


class PinnedPool:
    """Page-locked host blocks kept for reuse, by size rounded up to 2 MiB. cudaHostAlloc pins page by page (on the
    H100 machine a 7B run's 13.8 GB of reads took 2.7 s longer to load and 3.7 s longer to compute when every
    read allocated its own buffer and freed it, as cudaFreeHost synchronises the device), and a run reads blocks
    of a few sizes over and over: its layer blocks' files are all one size. Like torch's caching host allocator,
    what is returned is kept, not freed, until the process ends.

    `prepare(sizes)` makes the blocks that are neither free nor on their way yet on a background thread, so the
    reader finds the next read's buffer made while it read the last (on the H200 a 7B run's reader spent 1.5-1.9 s
    getting buffers before reads, with the disk idle). `take` waits for a block of its size on its way rather than
    make a second one; if making it failed, `take` makes its own and raises the error where the read needs it.
    What `prepare` makes is used by a later `take`, or kept: at most the blocks one lookahead asks for beyond
    what the run would have made anyway."""

    GRAIN = 2 << 20

    def __init__(self, allocate):
        self._allocate = allocate  # size -> address, page-aligned (cudaHostAlloc's are)
        self._free: dict[int, list[int]] = {}
        self._coming: Counter = Counter()  # blocks of each size that prepare's thread is making
        self._lock = threading.Condition()
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cetrt-pin")  # its thread starts when used
        self.allocated_bytes, self.allocations, self.allocate_s = 0, 0, 0.0
        self.made_ahead, self.waited_s = 0, 0.0

    @classmethod
    def rounded(cls, nbytes: int) -> int:
        return -(-max(nbytes, 1) // cls.GRAIN) * cls.GRAIN

    def take(self, nbytes: int) -> tuple[int, int]:
        size = self.rounded(nbytes)
        with self._lock:
            if not self._free.get(size) and self._coming[size]:
                start = time.perf_counter()
                self._lock.wait_for(lambda: self._free.get(size) or not self._coming[size])
                self.waited_s += time.perf_counter() - start
            kept = self._free.get(size)
            if kept:
                return kept.pop(), size
        return self._make(size), size

    def prepare(self, sizes: list[int]) -> None:
        """The next takes will ask for these sizes: make, in the background, those no free block or block on its
        way will serve."""
        wanted = Counter(self.rounded(n) for n in sizes)
        with self._lock:
            for size, count in wanted.items():
                for _ in range(count - len(self._free.get(size, ())) - self._coming[size]):
                    self._coming[size] += 1
                    self._maker.submit(self._make_ahead, size)

    def _make_ahead(self, size: int) -> None:
        try:
            address = self._make(size)
        except Exception:  # the take that needs it makes its own, and raises this on the reader's thread
            address = None
        with self._lock:
            self._coming[size] -= 1
            if address is not None:
                self._free.setdefault(size, []).append(address)
                self.made_ahead += 1
            self._lock.notify_all()

    def _make(self, size: int) -> int:
        start = time.perf_counter()
        address = self._allocate(size)
        with self._lock:
            self.allocate_s += time.perf_counter() - start
            self.allocated_bytes += size
            self.allocations += 1
        if address % _ALIGN:
            raise RuntimeError(f"page-locked memory at {address:#x} is not {_ALIGN}-byte aligned")
        return address

    def give(self, address: int, size: int) -> None:
        with self._lock:
            self._free.setdefault(size, []).append(address)
            self._lock.notify_all()

    def stats(self) -> dict:
        """What the pool cost a run: a reader waiting for its buffers (results' `reader_buffer_s`) is either
        waiting here (`waited_s`: for a block prepare's thread is making), in cudaHostAlloc on its own thread, or
        on its read-ahead slots. `allocate_s` counts cudaHostAlloc on both threads; `made_ahead`, the blocks
        prepare's thread made."""
        with self._lock:
            return {"allocated_bytes": self.allocated_bytes, "allocations": self.allocations,
                    "allocate_s": round(self.allocate_s, 4), "made_ahead": self.made_ahead,
                    "waited_s": round(self.waited_s, 4)}


def zero_copy(setting: str, integrated: bool) -> bool:
    """Whether kernels read the reader's page-locked buffers in place: CETRT_ZERO_COPY ("1" or "0"), else on an
    integrated GPU only (on a discrete one every access would cross PCIe)."""
    return parse("CETRT_ZERO_COPY", setting, integrated)


def allocate_ahead(setting: str, zero_copy: bool) -> bool:
    """Whether the pool makes the next read's page-locked buffer beside the read under way: CETRT_PINNED_AHEAD
    ("1" or "0", for A/B), else except with zero copy (the Orin), where the buffers are the weights the GPU uses and
    the plan counts only those a run holds, not one made ahead."""
    return parse("CETRT_PINNED_AHEAD", setting, not zero_copy)


class CudaRuntimeDevice:
    """One per process: the compute and copy streams, the pool and the uploads in flight (same interface as
    cetrt.backends.device.Device)."""

    kind = "cuda"
    name = "cuda-bindings"

    def __init__(self, shared_stream: bool, pinned: bool, index: int = 0):
        cuda = self._cuda = _Cuda()
        rt = cuda.rt
        self.index, self.shared_stream, self.pinned = index, shared_stream, pinned
        cuda("cudaSetDevice", index)
        self.compute = cuda("cudaStreamCreateWithFlags", rt.cudaStreamNonBlocking)
        self.copy = cuda("cudaStreamCreateWithFlags", rt.cudaStreamNonBlocking)
        pool = cuda("cudaDeviceGetDefaultMemPool", index)
        cuda("cudaMemPoolSetAttribute", pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold,
             cuda.driver.cuuint64_t(_KEEP_ALL))
        self._in_flight: deque = deque()  # (event, host array) of copies not yet known to be done
        self._in_flight_lock = threading.RLock()  # uploads come from the executor and a resident store's loader
        integrated = cuda("cudaDeviceGetAttribute", rt.cudaDeviceAttr.cudaDevAttrIntegrated, index) == 1
        self.zero_copy = zero_copy(os.environ.get("CETRT_ZERO_COPY", ""), integrated)
        flags = rt.cudaHostAllocMapped if self.zero_copy else rt.cudaHostAllocDefault
        self.allocate_ahead = allocate_ahead(os.environ.get("CETRT_PINNED_AHEAD", ""), self.zero_copy)

        def page_locked(size: int) -> int:
            cuda("cudaSetDevice", index)  # also on the pool's own thread, whose current device is not set
            return int(cuda("cudaHostAlloc", size, flags))

        self._pinned = PinnedPool(page_locked)

    @property
    def stream_handle(self) -> int:
        return int(self.compute)

    def _release(self, address: int) -> None:
        self._cuda.rt.cudaFreeAsync(address, self.compute)  # no check: may run while the interpreter unwinds

    def empty(self, shape, dtype, stream=None) -> DeviceArray:
        nbytes = max(int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize, 1)
        address = self._cuda("cudaMallocAsync", nbytes, self.compute if stream is None else stream)
        return DeviceArray(int(address), tuple(shape), dtype, self.index, self._release)

    def upload(self, array) -> DeviceArray:
        """`array` on the device, copied on the copy stream; the compute stream waits for it. From page-locked
        memory (the reader's buffers) it returns before the copy is done, unless the backend keeps its own stream
        (then nothing would order its run after the copy)."""
        if isinstance(array, DeviceArray):
            return array
        cuda, rt = self._cuda, self._cuda.rt
        host = np.ascontiguousarray(array)
        self._forget_finished()
        mapped = self._mapped(host) if self.zero_copy else None
        if mapped is not None:
            return mapped
        moved = self.empty(host.shape, host.dtype, stream=self.copy)
        cuda("cudaMemcpyAsync", moved.data_ptr(), host.ctypes.data, host.nbytes,
             rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.copy)
        done = cuda("cudaEventCreateWithFlags", rt.cudaEventDisableTiming)
        cuda("cudaEventRecord", done, self.copy)
        if not self.shared_stream:
            cuda("cudaEventSynchronize", done)
        cuda("cudaStreamWaitEvent", self.compute, done, 0)
        with self._in_flight_lock:
            self._in_flight.append((done, host))  # the host bytes must outlive the copy
        return moved

    def _mapped(self, host: np.ndarray) -> DeviceArray | None:
        """`host` as the device sees it, if it lies in page-locked memory (the reader's buffers); else None. The
        host bytes are kept until the compute stream has passed the array's last use."""
        rt = self._cuda.rt
        error, attributes = rt.cudaPointerGetAttributes(host.ctypes.data)
        if error != rt.cudaError_t.cudaSuccess or attributes.type != rt.cudaMemoryType.cudaMemoryTypeHost:
            return None
        return DeviceArray(int(attributes.devicePointer), host.shape, host.dtype, self.index,
                           lambda _address, host=host: self._keep_until_computed(host))

    def _keep_until_computed(self, host: np.ndarray) -> None:
        """Hold `host` (back in the pool only when dropped) until the compute stream reaches this point."""
        rt = self._cuda.rt
        error, done = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)
        if error == rt.cudaError_t.cudaSuccess:  # no check beyond this: may run while the interpreter unwinds
            rt.cudaEventRecord(done, self.compute)
            with self._in_flight_lock:
                self._in_flight.append((done, host))

    def _forget_finished(self) -> None:
        rt = self._cuda.rt
        with self._in_flight_lock:
            while self._in_flight and rt.cudaEventQuery(self._in_flight[0][0])[0] == rt.cudaError_t.cudaSuccess:
                rt.cudaEventDestroy(self._in_flight.popleft()[0])

    def to_host(self, value) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        rt = self._cuda.rt
        out = np.empty(value.shape, value.dtype)
        self._cuda("cudaMemcpyAsync", out.ctypes.data, value.data_ptr(), value.nbytes,
                   rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.compute)
        self._cuda("cudaStreamSynchronize", self.compute)
        return out

    def host_buffer(self, nbytes: int) -> memoryview | None:
        """Page-locked host memory for the reader (O_DIRECT-aligned), back in the pool when its last view goes."""
        if not self.pinned:
            return None
        address, size = self._pinned.take(nbytes)
        block = (ctypes.c_ubyte * nbytes).from_address(address)
        finalizer = weakref.finalize(block, self._pinned.give, address, size)
        finalizer.atexit = False
        return memoryview(np.frombuffer(block, dtype=np.uint8))

    def prepare_host_buffers(self, sizes: list[int]) -> None:
        """The reader's next takes will ask for these sizes: the pool makes them beside the read under way."""
        if self.pinned and self.allocate_ahead:
            self._pinned.prepare(sizes)

    def host_buffers(self) -> HostBuffers:
        return HostBuffers(self.host_buffer, self.prepare_host_buffers)

    def host_buffer_stats(self) -> dict | None:
        return self._pinned.stats() if self.pinned else None

    def to_device(self, value: DeviceArray, index: int) -> DeviceArray:
        """A copy of `value` on GPU `index` (the multi-GPU pipeline's hand-over; untested: no such machine here)."""
        if value.device_index == index:
            return value
        cuda = self._cuda
        cuda("cudaSetDevice", index)
        address = int(cuda("cudaMalloc", max(value.nbytes, 1)))
        cuda("cudaMemcpyPeer", address, index, value.data_ptr(), value.device_index, value.nbytes)
        return DeviceArray(address, value.shape, value.dtype, index, lambda a: cuda.rt.cudaFree(a))

    def synchronize(self) -> None:
        self._cuda("cudaStreamSynchronize", self.compute)
        self._cuda("cudaStreamSynchronize", self.copy)
        self._forget_finished()
