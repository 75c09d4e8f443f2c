"""Session fixtures: tiny random models, their FP32 exports and ORT CPU engines, built once per session.

Exporting takes seconds per block, so each architecture is exported and built once and shared read-only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import HELLASWAG, make_tiny_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def hellaswag_path() -> Path:
    assert HELLASWAG.is_file(), f"tests read the dataset from {HELLASWAG}"
    return HELLASWAG


class TinyZoo:
    """Builds and caches per architecture: model dir -> FP32 export -> ORT CPU engines."""

    def __init__(self, root: Path, tokenizer):
        self.root = root
        self.tokenizer = tokenizer
        self._cache: dict[tuple, Path] = {}

    def model(self, arch: str) -> Path:
        key = ("model", arch)
        if key not in self._cache:
            self._cache[key] = make_tiny_model(self.root / "models" / arch, arch, self.tokenizer)
        return self._cache[key]

    def onnx(self, arch: str, dtype: str = "float32") -> Path:
        from cetrt.export.pipeline import ExportOptions, export_model

        key = ("onnx", arch, dtype)
        if key not in self._cache:
            out = self.root / "onnx" / f"{arch}-{dtype}"
            export_model(ExportOptions(model=str(self.model(arch)), out_dir=out, dtype=dtype, layers_per_block=2))
            self._cache[key] = out
        return self._cache[key]

    def engines(self, arch: str, dtype: str = "float32") -> Path:
        from cetrt.build.engines import BuildOptions, build_engines

        key = ("engines", arch, dtype)
        if key not in self._cache:
            out = self.root / "engines" / f"{arch}-{dtype}"
            build_engines(BuildOptions(onnx_dir=self.onnx(arch, dtype), out_dir=out))
            self._cache[key] = out
        return self._cache[key]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, tokenizer) -> TinyZoo:
    return TinyZoo(tmp_path_factory.mktemp("zoo"), tokenizer)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need ONNX Runtime's CUDA provider: `make test` deselects them (-m "not gpu"); a bare
    `pytest` on a machine without one reports them skipped with this reason instead of failing."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return
    reason = pytest.mark.skip(reason="needs a CUDA GPU with onnxruntime-gpu (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(reason)
