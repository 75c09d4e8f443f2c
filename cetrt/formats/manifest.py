"""manifest.json: the one writer and reader of the build stage's output, and the engines' integrity check.

An engines directory holds one engine per block, `tokenizer/`, and `manifest.json`: the model (id, hash,
shape), precision, backend and its version, target, build options, and per block its interface, files
(bytes, whole-file sha256, and the xxh3-128 digest of each 16 MiB chunk that streaming checks), build time
and backend details. Built with weights as inputs, it holds instead one engine per block type (`engine_types`,
resident for the whole run) and per block a weights file with its index. Opening the directory checks format and
sizes; each streamed file's chunk digests are checked on the bytes as the runner reads them for loading
(cetrt.storage); the tokenizer files and calib.json (`calib_file`) are small and checked by `check_side_files`
before they are read. `inputs` records what the build depended on (export digest, calib.json, backend and
options): an unchanged build is skipped.
Usage: `write_manifest(out_dir, manifest)`; `manifest = read_manifest(engines_dir)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cetrt.errors import UserError
from cetrt.files import FileRecord, read_versioned_json, write_json_atomic
from cetrt.formats.weights import WeightEntry
from cetrt.spec import BlockSpec, ModelSpec, Target, TensorSpec

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2  # 2: layer blocks take segment ids [B, L] (blocks.json version 2)
_FIX = "rebuild the engines with `make engines` (or `ce-build`)"


@dataclass(frozen=True)
class EngineBlock:
    spec: BlockSpec
    files: tuple[FileRecord, ...]  # the engine first, then side files (external weights); or the weights file
    build_seconds: float
    details: dict = field(default_factory=dict)
    engine_type: str | None = None  # weights as inputs: the shared engine this block's weights feed
    weights: tuple[WeightEntry, ...] = ()  # ... and where each input's array lies in the weights file

    def to_json(self) -> dict:
        data = {
            **self.spec.to_json(),
            "files": [f.to_json() for f in self.files],
            "build_seconds": round(self.build_seconds, 3),
            "details": self.details,
        }
        if self.engine_type is not None:
            data.update(engine_type=self.engine_type, weights=[w.to_json() for w in self.weights])
        return data

    @classmethod
    def from_json(cls, data: dict) -> "EngineBlock":
        return cls(
            spec=BlockSpec.from_json(data),
            files=tuple(FileRecord.from_json(f) for f in data["files"]),
            build_seconds=float(data["build_seconds"]),
            details=dict(data.get("details", {})),
            engine_type=data.get("engine_type"),
            weights=tuple(WeightEntry.from_json(w) for w in data.get("weights", [])),
        )


@dataclass(frozen=True)
class EngineType:
    """One engine shared by every block of the same graph; its weights are inputs, fed from each block's file."""

    name: str
    files: tuple[FileRecord, ...]
    weight_inputs: tuple[TensorSpec, ...]
    blocks: tuple[int, ...]  # indices of the blocks that use it
    build_seconds: float
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "files": [f.to_json() for f in self.files],
                "weight_inputs": [t.to_json() for t in self.weight_inputs], "blocks": list(self.blocks),
                "build_seconds": round(self.build_seconds, 3), "details": self.details}

    @classmethod
    def from_json(cls, data: dict) -> "EngineType":
        return cls(name=data["name"], files=tuple(FileRecord.from_json(f) for f in data["files"]),
                   weight_inputs=tuple(TensorSpec.from_json(t) for t in data["weight_inputs"]),
                   blocks=tuple(int(i) for i in data["blocks"]), build_seconds=float(data["build_seconds"]),
                   details=dict(data.get("details", {})))


@dataclass(frozen=True)
class Manifest:
    model_id: str
    model_hash: str
    model: ModelSpec
    dtype: str
    backend: str
    backend_version: str
    target: Target
    tokenizer_files: tuple[FileRecord, ...]
    blocks: tuple[EngineBlock, ...]
    build_options: dict = field(default_factory=dict)
    engine_types: tuple[EngineType, ...] = ()
    calib_file: FileRecord | None = None  # calib.json beside the engines, if the build copied one
    inputs: dict = field(default_factory=dict)  # what the build depended on: unchanged inputs, build skipped

    def check_side_files(self, engines_dir: Path) -> None:
        """The small files read whole at open (tokenizer, calib.json) against their recorded sha256."""
        for record in self.tokenizer_files + ((self.calib_file,) if self.calib_file else ()):
            record.check_digest(Path(engines_dir), None, "it changed after the build; " + _FIX)

    @property
    def all_files(self) -> tuple[FileRecord, ...]:
        engine_files = tuple(f for b in self.blocks for f in b.files) + tuple(f for t in self.engine_types for f in t.files)
        return self.tokenizer_files + engine_files + ((self.calib_file,) if self.calib_file else ())

    @property
    def weights_layout(self) -> str:
        """"inside": one engine per block, weights inside; "inputs": shared engine types fed weights files."""
        return "inputs" if self.engine_types else "inside"

    @property
    def shared_engine_bytes(self) -> int:
        """Engine types stay loaded for the whole run, whatever the budget."""
        return sum(f.bytes for t in self.engine_types for f in t.files)

    @property
    def engine_bytes(self) -> int:
        return sum(f.bytes for b in self.blocks for f in b.files) + self.shared_engine_bytes

    def engine_type(self, name: str) -> EngineType:
        return next(t for t in self.engine_types if t.name == name)

    def to_json(self) -> dict:
        return {
            "format": "cetrt-manifest",
            "version": MANIFEST_VERSION,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "model": self.model.to_json(),
            "dtype": self.dtype,
            "backend": {"name": self.backend, "version": self.backend_version},
            "target": self.target.to_json(),
            "build_options": self.build_options,
            "tokenizer_files": [f.to_json() for f in self.tokenizer_files],
            "blocks": [b.to_json() for b in self.blocks],
            "engine_types": [t.to_json() for t in self.engine_types],
            "calib_file": self.calib_file.to_json() if self.calib_file else None,
            "inputs": self.inputs,
        }


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    path = Path(out_dir) / MANIFEST_FILE
    write_json_atomic(path, manifest.to_json())
    return path


def read_manifest(engines_dir: Path) -> Manifest:
    """Open an engines directory: format, version, target record, and every file present at its size."""
    engines_dir = Path(engines_dir)
    path, data = read_versioned_json(engines_dir, MANIFEST_FILE, "cetrt-manifest", MANIFEST_VERSION,
                                     "no such engines directory; build it first with `make engines`", _FIX)
    try:
        target = Target(**{**data["target"], "backends": tuple(data["target"]["backends"])})
        manifest = Manifest(
            model_id=data["model_id"],
            model_hash=data["model_hash"],
            model=ModelSpec.from_json(data["model"]),
            dtype=data["dtype"],
            backend=data["backend"]["name"],
            backend_version=data["backend"]["version"],
            target=target,
            tokenizer_files=tuple(FileRecord.from_json(f) for f in data["tokenizer_files"]),
            blocks=tuple(EngineBlock.from_json(b) for b in data["blocks"]),
            build_options=dict(data.get("build_options", {})),
            engine_types=tuple(EngineType.from_json(t) for t in data.get("engine_types", [])),
            calib_file=FileRecord.from_json(data["calib_file"]) if data.get("calib_file") else None,
            inputs=dict(data.get("inputs") or {}),
        )
        unknown = {b.engine_type for b in manifest.blocks if b.engine_type} - {t.name for t in manifest.engine_types}
        if unknown:
            raise ValueError(f"blocks name engine types {sorted(unknown)} that the manifest does not list")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed ({type(e).__name__}: {e}); {_FIX}") from None
    except UserError as e:  # a record this cetrt cannot check (its message names the file and the fix)
        raise UserError(f"{path}: {e}") from None
    for record in manifest.all_files:
        record.check_size(engines_dir, _FIX)
    return manifest
