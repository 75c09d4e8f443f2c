"""Shared libraries loaded without holding Python's GIL.

`ctypes.CDLL` holds the GIL through `dlopen` (a Python thread stalled 0.17 s of a 0.18 s load of a 434 MB library
on the 2-core CPU machine: `bench/dlopen_gil.py`). ONNX Runtime's `preload_dlls` and cuda-pathfinder load CUDA's and
cuDNN's libraries that way, about 2 GB, from storage when the page cache is cold; ce-run does it on the preparation
thread beside tokenizing (runner/loading.py), whose Python then waits: tokenizing took 1.84-1.99 s beside the
preparation against 0.93-1.03 s without it in the H200 SmolLM2 runs. Inside `gil_free_loads()` every `ctypes.CDLL`
first loads its library through a ctypes *function call* to `dlopen`, which releases the GIL, with the same flags;
the `CDLL` that follows finds it loaded and returns at once. Linux only; CETRT_GIL_FREE_LOADS=0 turns it off (the
baseline of `bench/gpu_speed.py gilab`).
Usage: `with gil_free_loads(): ort.preload_dlls()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

from cetrt.switches import switch

# One patch at a time (nested on one thread is fine); another thread's CDLL meanwhile works the same, patched or not.
_PATCHING = threading.RLock()


def _libc_dlopen():
    """`dlopen` as a ctypes function (calls release the GIL), or None where none is found."""
    for name in ("libdl.so.2", None):  # glibc before 2.34 keeps dlopen in libdl; after, libc (the process's symbols)
        try:
            dlopen = ctypes.CDLL(name).dlopen
        except (OSError, AttributeError):
            continue
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        return dlopen
    return None


def _loading_first(dlopen, original: type) -> type:
    class LoadedFirst(original):
        """A CDLL whose library is loaded by a GIL-free dlopen first (CPython's own adds RTLD_NOW, as here)."""

        def __init__(self, name, mode=ctypes.DEFAULT_MODE, *args, **kwargs):
            if isinstance(name, (str, bytes, os.PathLike)):
                dlopen(os.fsencode(name), mode | os.RTLD_NOW)  # a failure is the CDLL's to report, below
            super().__init__(name, mode, *args, **kwargs)

    return LoadedFirst


@contextlib.contextmanager
def gil_free_loads(dlopen=None):
    """Within this block, `ctypes.CDLL` loads without holding the GIL (module docstring); `dlopen` for tests."""
    dlopen = dlopen or (_libc_dlopen() if sys.platform == "linux" else None)
    if dlopen is None or not switch("CETRT_GIL_FREE_LOADS", default=True):
        yield
        return
    with _PATCHING:
        original = ctypes.CDLL
        ctypes.CDLL = _loading_first(dlopen, original)
        try:
            yield
        finally:
            ctypes.CDLL = original
