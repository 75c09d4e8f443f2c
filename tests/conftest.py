"""Session fixtures: tiny random models, their FP32 exports and ORT CPU engines, built once per session.

Exporting takes seconds per block, so each architecture is exported and built once and shared read-only.
With CETRT_TEST_ZOO set (the mutant gauntlet, tests/mutants/), the zoo lives in that folder across pytest
processes, each entry under a digest of the sources that make it: a mutant of the runner reuses the exports,
a mutant of the export makes its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


ROOT = Path(__file__).resolve().parents[1]
# Files only a run reads (never the export or the build): a mutant of one of them reuses the shared exports.
RUN_ONLY = {"cetrt/cli.py", "cetrt/plan.py", "cetrt/storage.py", "cetrt/formats/results.py", "cetrt/workload/hellaswag.py",
            "cetrt/workload/tokens.py", "cetrt/workload/pair_split.py", "cetrt/workload/packing.py"}
BUILD_ONLY = ("build/", "cetrt/backends/")  # an export never runs these; a build does


def sources_digest(build: bool) -> str:
    """sha256 over the sources an export (and with `build`, a build) may run: cetrt/, export/, build/ and
    tests/tiny_models.py, less RUN_ONLY (and BUILD_ONLY for an export)."""
    digest = hashlib.sha256()
    files = [p for folder in ("cetrt", "export", "build") for p in sorted((ROOT / folder).rglob("*.py"))]
    for path in files + [ROOT / "tests" / "tiny_models.py"]:
        name = path.relative_to(ROOT).as_posix()
        if name not in RUN_ONLY and (build or not name.startswith(BUILD_ONLY)):
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class TinyZoo:
    """Builds and caches per architecture: model dir -> FP32 export -> ORT CPU engines."""

    def __init__(self, root: Path, tokenizer, shared: bool = False):
        self.root = root / sources_digest(build=False) if shared else root
        self.engines_root = self.root / f"engines-{sources_digest(build=True)}" if shared else root / "engines"
        self.tokenizer = tokenizer
        self._shared = shared
        self._cache: dict[tuple, Path] = {}

    def _make(self, key: tuple, out: Path, make) -> Path:
        """`make(folder)` fills a folder once; shared, into a scratch folder renamed when complete."""
        if key not in self._cache:
            if not self._shared:
                make(out)
            elif not out.exists():
                scratch = out.with_name(f"{out.name}.partial-{os.getpid()}")
                shutil.rmtree(scratch, ignore_errors=True)
                make(scratch)
                scratch.rename(out)
            self._cache[key] = out
        return self._cache[key]

    def model(self, arch: str) -> Path:
        return self._make(("model", arch), self.root / "models" / arch,
                          lambda out: make_tiny_model(out, arch, self.tokenizer))

    def onnx(self, arch: str, dtype: str = "float32", layers_per_block: int = 2) -> Path:
        from cetrt.export.pipeline import ExportOptions, export_model

        model = self.model(arch)
        return self._make(("onnx", arch, dtype, layers_per_block), self.root / "onnx" / f"{arch}-{dtype}-{layers_per_block}",
                          lambda out: export_model(ExportOptions(model=str(model), out_dir=out, dtype=dtype,
                                                                 layers_per_block=layers_per_block)))

    def engines(self, arch: str, dtype: str = "float32", layers_per_block: int = 2) -> Path:
        from cetrt.build.engines import BuildOptions, build_engines

        onnx_dir = self.onnx(arch, dtype, layers_per_block)
        return self._make(("engines", arch, dtype, layers_per_block),
                          self.engines_root / f"{arch}-{dtype}-{layers_per_block}",
                          lambda out: build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=out)))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, tokenizer) -> TinyZoo:
    shared = os.environ.get("CETRT_TEST_ZOO")
    if shared:
        return TinyZoo(Path(shared), tokenizer, shared=True)
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
