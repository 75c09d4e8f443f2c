"""The backend seam: build an engine from an ONNX file, load an engine, run it on named inputs.

A backend is small and stateless; a `Session` is one loaded engine. Tensors between blocks stay whatever the
session returns (a NumPy array on CPU, a device buffer on GPU); the runner only asks a session to bring the
head's outputs to the host with `to_host`. Loading takes a `EngineSource`, so the caller (the streamer)
decides when the bytes are read.
What a build or a load may be told is typed (`BuildSettings`, `LoadSettings`): every backend takes the same
records and ignores what does not apply to it.
Usage: `backend.build(onnx_path, engine_path, block, target, BuildSettings())`;
`session = backend.load(source, target, LoadSettings())`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cetrt.spec import BlockSpec, Target
from cetrt.storage import HostBuffers
from cetrt.workload.shapes import ShapePlan


@dataclass(frozen=True)
class BuildSettings:
    check: bool = False  # parse and build for a target whose GPU is not here (engines are not for running)
    shape_plan: ShapePlan | None = None  # optimization profiles (backends with fixed shapes need one)
    optimization_level: int = 3  # TensorRT's builder optimization level


@dataclass(frozen=True)
class LoadSettings:
    threads: int | None = None  # intra-op threads of CPU backends (None: all cores)
    io_binding: bool = False  # ONNX Runtime with I/O binding on CPU too (the CUDA path's host logic)


@dataclass(frozen=True)
class EngineSource:
    """Where an engine's bytes come from: its path, and optionally a callable that reads (and verifies) them."""

    path: Path
    read: Callable[[], bytes | memoryview] | None = None

    def read_bytes(self) -> bytes | memoryview:
        """The engine's bytes: a memoryview of the reader's buffer when the streamer read them (no copy)."""
        return self.read() if self.read is not None else self.path.read_bytes()


@dataclass(frozen=True)
class BuildResult:
    files: tuple[Path, ...]  # the engine first, then any side files it needs at load time
    seconds: float
    details: dict  # backend-specific facts worth recording in the manifest (layer counts, profiles)


class Session(ABC):
    @abstractmethod
    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run the engine on named inputs; returns named outputs."""

    def to_host(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def upload(self, name: str, array: np.ndarray) -> Any:
        """The array where the engine reads its inputs (device memory on a GPU), for feeds reused across runs."""
        return array

    def close(self) -> None:
        """Free the engine's memory now rather than at garbage collection."""


class WeightsBound(Session):
    """A shared engine type with one block's weights bound: runs add the weights to the block's own feeds.

    Closing drops the weights, not the engine, which stays for the other blocks of its type; unless
    `owns_engine` (an engine made for these weights alone, as calib makes them), which closing closes too.
    """

    def __init__(self, engine: Session, weights: dict[str, np.ndarray], owns_engine: bool = False):
        self._engine = engine
        self._owns_engine = owns_engine
        self._weights = {name: engine.upload(name, array) for name, array in weights.items()}

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return self._engine.run({**feeds, **self._weights})

    def to_host(self, value: Any) -> np.ndarray:
        return self._engine.to_host(value)

    def upload(self, name: str, array: np.ndarray) -> Any:
        return self._engine.upload(name, array)

    def close(self) -> None:
        self._weights = {}
        if self._owns_engine:
            self._engine.close()


class Backend(ABC):
    name: str
    engine_suffix: str
    fixed_shapes: bool = False  # engines accept only the shapes of their optimization profiles

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def build(self, onnx_path: Path, engine_path: Path, block: BlockSpec, target: Target,
              settings: BuildSettings) -> BuildResult: ...

    @abstractmethod
    def load(self, source: EngineSource, target: Target, settings: LoadSettings) -> Session: ...

    def graph_for(self, model, target: Target):
        """The ONNX graph (a ModelProto) as this backend builds it for `target`: the export's own, unless the
        backend rewrites it (ONNX Runtime on a GPU fuses attention). calib times what the build would make."""
        return model

    def rewrites(self, target: Target) -> str | None:
        """What `graph_for` does to graphs for `target`, named and versioned, or None: a build input, so engines
        built before a rewrite changed are built again rather than reused."""
        return None

    def host_buffers(self, target: Target) -> HostBuffers | None:
        """Where the reader should put the bytes it reads for this backend (page-locked memory for a GPU), or
        None for plain page-aligned memory."""
        return None

    def host_buffer_stats(self, target: Target) -> dict | None:
        """What getting those buffers cost the run so far (bytes and number allocated, seconds allocating), where
        the backend counts it; None where it does not or the reader uses plain memory."""
        return None
