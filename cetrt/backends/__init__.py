"""Backend registry: names to classes, imported lazily so `ce-run --help` works without heavy packages.

Usage: `backend = get_backend("onnxruntime")`.
"""

from __future__ import annotations

import importlib

from cetrt.backends.base import Backend
from cetrt.errors import UserError

_BACKENDS = {
    "onnxruntime": ("cetrt.backends.onnxruntime", "OnnxRuntimeBackend", ()),
    "tensorrt": ("cetrt.backends.tensorrt", "TensorRTBackend", ("tensorrt",)),
    "tensorrt-rtx": ("cetrt.backends.tensorrt", "TensorRTBackend", ("tensorrt-rtx",)),
}
BACKEND_NAMES = tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {list(BACKEND_NAMES)}")
    module, cls, args = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(*args)
