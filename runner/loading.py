"""Sessions from engine bytes, for both layouts: a block's own engine, or its engine type with its weights bound.

With weights as inputs, each engine type is read and loaded the first time one of its blocks is needed and
stays for the run (counted as held memory); a block's "engine bytes" are then its weights file, which become
the arrays bound to the type's weight inputs (copied to the device on a GPU), with no session to create.
Usage: `load = BlockLoader(engines_dir, manifest, backend, LoadSettings(), stats, meter)`; `session = load(block, source)`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cetrt import storage
from cetrt.backends.base import Backend, EngineSource, LoadSettings, Session, WeightsBound
from cetrt.formats.manifest import EngineBlock, Manifest
from cetrt.formats.weights import weights_from_bytes
from cetrt.storage import ReadStats


class BlockLoader:
    def __init__(self, engines_dir: Path, manifest: Manifest, backend: Backend, settings: LoadSettings, stats: ReadStats,
                 meter):
        self._dir, self._manifest, self._backend, self._settings = engines_dir, manifest, backend, settings
        self._stats, self._meter = stats, meter
        self._types: dict[str, Session] = {}
        self._types_lock = threading.Lock()  # prepare's thread, a resident store's loader and the executor

    def prepare(self) -> None:
        """What a run needs before its first block and that does not depend on the documents: the backend's device
        (on a GPU: the CUDA context, streams and page-locked pool) and every engine type (weights as inputs), read,
        loaded and kept, which on ONNX Runtime CUDA also loads its provider's libraries. ce-run does this beside
        tokenizing, so neither waits for the other. The host buffers of the first reads are asked for here too, as the
        reader will ask for them."""
        buffers = self._backend.host_buffers(self._manifest.target)
        if buffers is not None:
            buffers.prepare(storage.buffer_sizes(storage.upcoming(self._manifest.blocks, 0)))
        for engine_type in self._manifest.engine_types:
            self._engine_type(engine_type.name)

    def __call__(self, block: EngineBlock, source: EngineSource) -> Session:
        if block.engine_type is None:
            return self._backend.load(source, self._manifest.target, self._settings)
        return WeightsBound(self._engine_type(block.engine_type), weights_from_bytes(source.read_bytes(), block.weights))

    def _engine_type(self, name: str) -> Session:
        with self._types_lock:
            if name not in self._types:
                engine_type = self._manifest.engine_type(name)
                data = storage.read_verified(self._dir, engine_type, self._stats)
                source = EngineSource(path=self._dir / engine_type.files[0].path, read=lambda: data)
                self._types[name] = self._backend.load(source, self._manifest.target, self._settings)
                self._meter.add(sum(f.bytes for f in engine_type.files))
            return self._types[name]

    def close(self) -> None:
        for session in self._types.values():
            session.close()
        self._types.clear()
