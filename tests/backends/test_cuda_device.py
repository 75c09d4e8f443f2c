"""The GPU runner's buffers through cuda-bindings (cetrt/backends/cuda_device.py), and how `device_for` chooses.

The choice is tested here with the driver's answers replaced (CI has no GPU); the buffers themselves need one
(`pytest -m gpu` on the device machine).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from cetrt.backends import device as device_module
from cetrt.errors import UserError


@pytest.fixture
def fresh_choice():
    device_module._make_device.cache_clear()
    yield
    device_module._make_device.cache_clear()


def _driver_says(monkeypatch, answer):
    from cuda.bindings import driver

    def version():
        if isinstance(answer, Exception):
            raise answer
        return 0, answer

    monkeypatch.setattr(driver, "cuDriverGetVersion", version)


def _torch_device(monkeypatch, works: bool, made: list):
    def make(kind, **kw):
        if not works:
            raise RuntimeError("torch.cuda.Stream requires CUDA support")
        made.append((kind, kw))
        return "torch device"

    monkeypatch.setattr(device_module, "Device", make)


def test_no_gpu_at_all_is_a_user_error_that_names_the_cpu_target(monkeypatch, fresh_choice):
    _driver_says(monkeypatch, OSError("libcuda.so.1: cannot open shared object file"))
    _torch_device(monkeypatch, works=False, made=[])
    with pytest.raises(UserError, match="no usable CUDA GPU.*no NVIDIA driver library.*torch.*--target cpu"):
        device_module.device_for("cuda")


def test_no_libcuda_where_cuda_bindings_looks_falls_back_to_torch(monkeypatch, fresh_choice):
    """On a Jetson, libcuda lives in a tegra folder: torch may find what cuda-bindings did not."""
    made = []
    _driver_says(monkeypatch, OSError("libcuda.so.1: cannot open shared object file"))
    _torch_device(monkeypatch, works=True, made=made)
    with pytest.warns(UserWarning, match="through torch.*no NVIDIA driver library where cuda-bindings looks"):
        assert device_module.device_for("cuda") == "torch device"
    assert made == [("cuda", {"shared_stream": False, "pinned": True})]


def test_an_older_driver_falls_back_to_torch_and_says_which_cuda_bindings_to_install(monkeypatch, fresh_choice):
    from cuda.bindings import runtime

    runtime_major = runtime.cudaRuntimeGetVersion()[1] // 1000
    _driver_says(monkeypatch, (runtime_major - 1) * 1000 + 60)
    made = []
    _torch_device(monkeypatch, works=True, made=made)
    with pytest.warns(UserWarning, match=r"through torch.*needs a CUDA %d driver.*cuda-bindings==12\.\*" % runtime_major):
        assert device_module.device_for("cuda") == "torch device"
    assert made == [("cuda", {"shared_stream": False, "pinned": True})]


@pytest.mark.parametrize("setting, shared", [(None, True), ("0", False), ("1", True)])
def test_onnx_runtime_shares_cuda_bindings_compute_stream_unless_told_not_to(monkeypatch, fresh_choice, setting, shared):
    """ORT on the runner's stream (no sync per run) is cuda-bindings' default; torch's device keeps it apart."""
    from cetrt.backends import cuda_device

    made = []
    monkeypatch.setattr(cuda_device, "CudaRuntimeDevice", lambda **kw: made.append(kw) or "cuda-bindings device")
    if setting is None:
        monkeypatch.delenv("CETRT_SHARED_STREAM", raising=False)
    else:
        monkeypatch.setenv("CETRT_SHARED_STREAM", setting)
    assert device_module.device_for("cuda") == "cuda-bindings device"
    assert made == [{"shared_stream": shared, "pinned": True}]


@pytest.mark.parametrize("setting, integrated, expected", [("", True, True), ("", False, False), ("1", False, True),
                                                          ("0", True, False), (" 1 ", False, True)])
def test_zero_copy_reads_in_place_on_an_integrated_gpu_unless_told_otherwise(setting, integrated, expected):
    from cetrt.backends.cuda_device import zero_copy

    assert zero_copy(setting, integrated) is expected


def test_cetrt_device_torch_asks_for_the_torch_device(monkeypatch, fresh_choice):
    monkeypatch.setenv("CETRT_DEVICE", "torch")
    monkeypatch.setattr(device_module, "Device", lambda kind, **kw: f"torch {kind}")
    assert device_module.device_for("cuda") == "torch cuda"


@pytest.mark.gpu
def test_the_gpu_device_imports_no_torch():
    """torch's import is what the device exists to avoid."""
    code = ("import sys, numpy as np\n"
            "from cetrt.backends.device import device_for\n"
            "device = device_for('cuda')\n"
            "assert np.array_equal(device.to_host(device.upload(np.ones(4))), np.ones(4))\n"
            "print(device.name, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "cuda-bindings False"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int64, np.bool_])
def test_uploads_come_back_unchanged(dtype, fresh_choice):
    from cetrt.backends.cuda_device import CudaRuntimeDevice

    device = CudaRuntimeDevice(shared_stream=False, pinned=True)
    array = (np.arange(3 * 5 * 7) % 5).reshape(3, 5, 7).astype(dtype)
    on_gpu = device.upload(array)
    assert on_gpu.shape == (3, 5, 7) and on_gpu.data_ptr() != 0
    assert np.array_equal(device.to_host(on_gpu), array)


@pytest.mark.gpu
def test_host_buffers_are_aligned_page_locked_and_upload_from_in_place():
    from cetrt.backends.cuda_device import CudaRuntimeDevice

    device = CudaRuntimeDevice(shared_stream=False, pinned=True)
    buffer = device.host_buffer(1 << 20)
    view = np.frombuffer(buffer, dtype=np.float16)
    assert view.ctypes.data % 4096 == 0
    view[:] = np.arange(view.size) % 1000
    assert np.array_equal(device.to_host(device.upload(view)), view)


@pytest.mark.gpu
def test_a_buffer_prepared_ahead_is_page_locked_and_is_the_one_the_reader_takes(monkeypatch):
    """cudaHostAlloc on the pool's own thread (its current device set there) gives memory uploads copy from."""
    from cetrt.backends.cuda_device import CudaRuntimeDevice

    monkeypatch.delenv("CETRT_PINNED_AHEAD", raising=False)
    monkeypatch.delenv("CETRT_ZERO_COPY", raising=False)
    device = CudaRuntimeDevice(shared_stream=False, pinned=True)
    buffers = device.host_buffers()
    buffers.prepare([3 << 20])
    view = np.frombuffer(buffers.take(3 << 20), dtype=np.float32)
    assert device._pinned.stats()["made_ahead"] == 1 and device._pinned.stats()["allocations"] == 1
    view[:] = np.arange(view.size)
    assert np.array_equal(device.to_host(device.upload(view)), view)


@pytest.mark.gpu
def test_zero_copy_reads_the_page_locked_buffer_in_place_and_holds_it_until_computed(monkeypatch):
    """The Orin's path, forced on a discrete GPU: no device copy, and the read buffer stays out of the pool while
    the array lives (else the next read would overwrite weights a kernel still reads)."""
    from cetrt.backends.cuda_device import CudaRuntimeDevice

    monkeypatch.setenv("CETRT_ZERO_COPY", "1")
    device = CudaRuntimeDevice(shared_stream=True, pinned=True)
    view = np.frombuffer(device.host_buffer(1 << 20), dtype=np.float32)
    view[:] = np.arange(view.size)
    on_gpu = device.upload(view[1024:])
    assert device.zero_copy and on_gpu.shape == (view.size - 1024,)
    assert np.array_equal(device.to_host(on_gpu), view[1024:])
    kept = len(device._pinned._free.get(1 << 21, []))
    del view
    assert len(device._pinned._free.get(1 << 21, [])) == kept  # the array still holds the block
    del on_gpu
    device.synchronize()
    import gc

    gc.collect()
    assert len(device._pinned._free.get(1 << 21, [])) == kept + 1  # back once the stream passed it
    plain = np.ones(8, np.float32)  # pageable memory: copied as before
    assert np.array_equal(device.to_host(device.upload(plain)), plain)


@pytest.mark.gpu
def test_freed_buffers_return_to_the_pool():
    """A run allocates every block's outputs anew: 200 x 256 MiB must reuse memory, not exhaust it."""
    from cetrt.backends.cuda_device import CudaRuntimeDevice

    device = CudaRuntimeDevice(shared_stream=False, pinned=False)
    addresses = set()
    for _ in range(200):
        addresses.add(device.empty((128, 1 << 20), np.float16).data_ptr())
    device.synchronize()
    assert len(addresses) < 10


def test_first_element_is_a_one_element_view_that_keeps_its_array_alive():
    """calib waits for a run by reading one element of its output, of either device's tensors."""
    import gc
    import weakref

    from cetrt.backends.cuda_device import DeviceArray
    from cetrt.backends.device import first_element

    freed = []
    array = DeviceArray(0x7000, (4, 5), np.float16, 0, release=freed.append)
    view = first_element(array)
    assert (view.data_ptr(), view.shape, view.nbytes) == (0x7000, (1,), 2)
    alive = weakref.ref(array)
    del array
    gc.collect()
    assert alive() is not None and freed == []
    del view
    gc.collect()
    assert freed == [0x7000]
    assert first_element(np.arange(6).reshape(2, 3)).tolist() == [0]


def test_page_locked_blocks_are_reused_by_size_not_allocated_per_read():
    """cudaHostAlloc pins page by page and cudaFreeHost synchronises the device: a run's reads take blocks back
    from the pool (a 7B run on the H100 lost 2.7 s of load and 3.7 s of compute without it)."""
    from cetrt.backends.cuda_device import PinnedPool

    made = []
    pool = PinnedPool(lambda size: made.append(size) or 0x10000000 * len(made))
    first = pool.take(300 << 20)
    assert first == (0x10000000, 300 << 20) and pool.take(1)[1] == 2 << 20
    pool.give(*first)
    assert pool.take((300 << 20) - 4096) == first  # same rounded size: the kept block
    assert pool.take(300 << 20)[0] == 0x30000000 and made == [300 << 20, 2 << 20, 300 << 20]
    assert pool.allocated_bytes == 602 << 20
    stats = pool.stats()  # what a run reports (streaming.host_buffers): only the allocations count, not the reuse
    assert (stats["allocated_bytes"], stats["allocations"]) == (602 << 20, 3) and stats["allocate_s"] >= 0


def _recording_pool(gate: threading.Event | None = None, fail_first: bool = False):
    """A PinnedPool over a fake cudaHostAlloc that notes each size and the thread that asked; `gate` holds the
    allocations until set, `fail_first` fails the first one as an exhausted cudaHostAlloc would."""
    from cetrt.backends.cuda_device import PinnedPool

    made: list[tuple[int, str]] = []

    def allocate(size: int) -> int:
        if gate is not None:
            assert gate.wait(10)
        if fail_first and not made:
            made.append((0, "failed"))
            raise UserError("the GPU is out of memory (cudaHostAlloc)")
        made.append((size, threading.current_thread().name))
        return 0x10000000 * len(made)

    return PinnedPool(allocate), made


def test_prepared_buffers_are_made_on_the_pools_thread_and_taken_without_a_second_allocation():
    """What the reader will take next is made beside the read under way, by the pool's own thread; blocks free
    or already on their way count, so a lookahead never makes more than the takes it names."""
    pool, made = _recording_pool()
    size = 300 << 20
    first = pool.take(size)  # made on this thread, as before
    pool.give(*first)
    pool.prepare([size, size, 5 << 20])  # one free already: one more of 300 MiB and one of 6 MiB (rounded)
    assert pool.take(size) in (first, (0x20000000, size), (0x30000000, size))
    assert pool.take(size)[1] == size and pool.take(5 << 20)[1] == 6 << 20
    assert sorted(s for s, _ in made) == [6 << 20, size, size]
    assert [thread for _, thread in made][0] == threading.current_thread().name
    assert all(thread.startswith("cetrt-pin") for _, thread in made[1:])
    pool.prepare([size])  # nothing free now: one more, and a second prepare of the same take adds none
    pool.prepare([size])
    assert pool.take(size)[1] == size and len(made) == 4
    stats = pool.stats()
    assert (stats["allocations"], stats["made_ahead"]) == (4, 3)


def test_a_take_waits_for_the_block_on_its_way_instead_of_making_another():
    gate = threading.Event()
    pool, made = _recording_pool(gate)
    pool.prepare([64 << 20])
    taken = []
    reader = threading.Thread(target=lambda: taken.append(pool.take(64 << 20)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and taken == []  # waiting for the pool's thread, not allocating its own
    gate.set()
    reader.join(10)
    assert taken == [(0x10000000, 64 << 20)] and len(made) == 1 and made[0][1].startswith("cetrt-pin")
    assert pool.stats()["waited_s"] > 0


def test_a_failed_allocation_ahead_is_raised_by_the_take_that_needs_the_buffer_not_lost():
    """The pool's thread has no one to tell: the take makes its own buffer, and a real failure surfaces there."""
    pool, made = _recording_pool(fail_first=True)
    pool.prepare([8 << 20])
    assert pool.take(8 << 20) == (0x20000000, 8 << 20)  # made on the reader's thread after the failure
    assert made[1][1] == threading.current_thread().name and pool.stats()["made_ahead"] == 0


@pytest.mark.parametrize("setting, zero_copy, expected", [("", False, True), ("", True, False), ("0", False, False),
                                                          ("1", True, True), (" 1 ", False, True)])
def test_buffers_are_made_ahead_on_a_discrete_gpu_unless_switched_off(setting, zero_copy, expected):
    """With zero copy (the Orin) the buffers are the weights the plan counts, so none is made beyond them."""
    from cetrt.backends.cuda_device import allocate_ahead

    assert allocate_ahead(setting, zero_copy) is expected


@pytest.mark.parametrize("name", ["zero_copy", "allocate_ahead"])
def test_an_on_off_setting_other_than_1_or_0_is_refused_by_name(name):
    """A typo must not quietly give the default: the run stops with the variable and what it takes."""
    from cetrt.backends import cuda_device

    variable = {"zero_copy": "CETRT_ZERO_COPY", "allocate_ahead": "CETRT_PINNED_AHEAD"}[name]
    with pytest.raises(UserError, match=f"{variable}='yes': give 1 or 0"):
        getattr(cuda_device, name)("yes", False)
