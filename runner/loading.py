"""Sessions from engine bytes, for both layouts: a block's own engine, or its engine type with its weights bound.

With weights as inputs, each engine type is read and loaded the first time one of its blocks is needed and
stays for the run (counted as held memory); a block's "engine bytes" are then its weights file, which become
the arrays bound to the type's weight inputs (copied to the device on a GPU), with no session to create.
Usage: `load = BlockLoader(engines_dir, manifest, backend, options, stats, meter)`; `session = load(block, source)`.
"""

from __future__ import annotations

from pathlib import Path

from cetrt.backends.base import Backend, EngineSource, Session, WeightsBound
from cetrt.manifest import EngineBlock, Manifest
from cetrt.runner import storage
from cetrt.runner.storage import ReadStats
from cetrt.weights import weights_from_bytes


class BlockLoader:
    def __init__(self, engines_dir: Path, manifest: Manifest, backend: Backend, options: dict, stats: ReadStats, meter):
        self._dir, self._manifest, self._backend, self._options = engines_dir, manifest, backend, options
        self._stats, self._meter = stats, meter
        self._types: dict[str, Session] = {}

    def __call__(self, block: EngineBlock, source: EngineSource) -> Session:
        if block.engine_type is None:
            return self._backend.load(source, self._manifest.target, self._options)
        return WeightsBound(self._engine_type(block.engine_type), weights_from_bytes(source.read_bytes(), block.weights))

    def _engine_type(self, name: str) -> Session:
        if name not in self._types:
            engine_type = self._manifest.engine_type(name)
            data = storage.read_verified(self._dir, engine_type, self._stats)
            source = EngineSource(path=self._dir / engine_type.files[0].path, read=lambda: data)
            self._types[name] = self._backend.load(source, self._manifest.target, self._options)
            self._meter.add(sum(f.bytes for f in engine_type.files))
        return self._types[name]

    def close(self) -> None:
        for session in self._types.values():
            session.close()
        self._types.clear()
