"""Libraries loaded without holding the GIL (cetrt.backends.libraries): inside `gil_free_loads()` every ctypes.CDLL
first goes through a GIL-free dlopen with CPython's flags, then loads as before; outside, or switched off, nothing
changes. Whether that frees the GIL in practice is measured, not asserted: bench/dlopen_gil.py."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import pytest

from cetrt.backends import libraries
from cetrt.backends.libraries import gil_free_loads
from cetrt.errors import UserError
from cetrt.spec import TARGETS

LIBM = ctypes.util.find_library("m") or "libm.so.6"


def recording_dlopen(calls: list):
    real = libraries._libc_dlopen()

    def dlopen(name: bytes, mode: int):
        calls.append((name, mode))
        return real(name, mode)
    return dlopen


def test_each_cdll_inside_loads_through_the_gil_free_dlopen_first_with_cpythons_flags():
    calls, original = [], ctypes.CDLL
    with gil_free_loads(recording_dlopen(calls)):
        assert ctypes.CDLL is not original
        libm = ctypes.CDLL(LIBM, mode=os.RTLD_GLOBAL)
        libm.cos.restype, libm.cos.argtypes = ctypes.c_double, [ctypes.c_double]
        assert libm.cos(0.0) == 1.0 and isinstance(libm, original)
    assert ctypes.CDLL is original
    assert calls == [(os.fsencode(LIBM), os.RTLD_GLOBAL | os.RTLD_NOW)]


def test_the_real_dlopen_is_found_and_loads():
    assert libraries._libc_dlopen() is not None
    with gil_free_loads():
        assert ctypes.CDLL(LIBM).cos


def test_switched_off_or_failing_the_cdll_is_left_alone_or_restored(monkeypatch):
    calls, original = [], ctypes.CDLL
    monkeypatch.setenv("CETRT_GIL_FREE_LOADS", "0")
    with gil_free_loads(recording_dlopen(calls)):
        assert ctypes.CDLL is original
        ctypes.CDLL(LIBM)
    assert calls == []
    monkeypatch.delenv("CETRT_GIL_FREE_LOADS")
    with pytest.raises(OSError):
        with gil_free_loads(recording_dlopen(calls)):
            ctypes.CDLL("/nonexistent/libnothing.so")  # the CDLL's own error, as without the patch
    assert ctypes.CDLL is original and calls == [(b"/nonexistent/libnothing.so", os.RTLD_NOW)]


def test_onnx_runtime_preloads_cuda_inside_the_block(monkeypatch):
    """ce-run's ORT CUDA sessions call preload_dlls with the CDLL patched (then, with only the CPU provider, the
    target is refused: after the preload)."""
    import onnxruntime

    from cetrt.backends.onnxruntime import _providers

    original, seen = ctypes.CDLL, []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: seen.append(ctypes.CDLL is not original))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    cuda = next(t for t in TARGETS.values() if t.device == "cuda")
    with pytest.raises(UserError, match="CUDAExecutionProvider"):
        _providers(cuda)
    assert seen == [True] and ctypes.CDLL is original
