"""blocks.json: the one writer and reader of the export stage's output.

An export directory holds `block_NNN.onnx` (plus `block_NNN.onnx.data` when weights go to external data),
`tokenizer/`, and `blocks.json`, which names the model, its shape, the precision, and per block its interface
and files with sizes and sha256, and `inputs`: what the export depended on (model hash, options, versions), so
an export whose inputs are unchanged and whose files verify is reused instead of redone. The build stage reads
only this.
Usage: `write_blocks(out_dir, exported)`; `exported = read_blocks(out_dir)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cetrt.errors import UserError
from cetrt.files import FileRecord, read_versioned_json, write_json_atomic
from cetrt.spec import BlockSpec, ModelSpec

BLOCKS_FILE = "blocks.json"
BLOCKS_VERSION = 2  # 2: layer blocks take segment ids [B, L] and build the packed mask in the graph
TOKENIZER_DIR = "tokenizer"  # beside the blocks, and copied as is beside the engines
_FIX = "re-run the export (`make engines` or `ce-export`)"


@dataclass(frozen=True)
class ExportedBlock:
    spec: BlockSpec
    files: tuple[FileRecord, ...]  # the .onnx first, then its external data if any

    @property
    def onnx_file(self) -> FileRecord:
        return self.files[0]


@dataclass(frozen=True)
class ExportedModel:
    model_id: str
    model_hash: str
    model: ModelSpec
    dtype: str
    opset: int
    tokenizer_files: tuple[FileRecord, ...]
    blocks: tuple[ExportedBlock, ...]
    inputs: dict = field(default_factory=dict)  # model hash, options and versions the export was made from

    @property
    def all_files(self) -> tuple[FileRecord, ...]:
        return self.tokenizer_files + tuple(f for b in self.blocks for f in b.files)

    def to_json(self) -> dict:
        return {
            "format": "cetrt-blocks",
            "version": BLOCKS_VERSION,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "model": self.model.to_json(),
            "dtype": self.dtype,
            "opset": self.opset,
            "tokenizer_files": [f.to_json() for f in self.tokenizer_files],
            "blocks": [{**b.spec.to_json(), "files": [f.to_json() for f in b.files]} for b in self.blocks],
            "inputs": self.inputs,
        }


def write_blocks(out_dir: Path, exported: ExportedModel) -> Path:
    path = Path(out_dir) / BLOCKS_FILE
    write_json_atomic(path, exported.to_json())
    return path


def read_blocks(export_dir: Path) -> ExportedModel:
    """Load and validate blocks.json: format, version, and that every file it names is present at its size."""
    export_dir = Path(export_dir)
    path, data = read_versioned_json(export_dir, BLOCKS_FILE, "cetrt-blocks", BLOCKS_VERSION,
                                     f"no such export directory; {_FIX}", _FIX)
    try:
        exported = ExportedModel(
            model_id=data["model_id"],
            model_hash=data["model_hash"],
            model=ModelSpec.from_json(data["model"]),
            dtype=data["dtype"],
            opset=int(data["opset"]),
            tokenizer_files=tuple(FileRecord.from_json(f) for f in data["tokenizer_files"]),
            blocks=tuple(
                ExportedBlock(spec=BlockSpec.from_json(b), files=tuple(FileRecord.from_json(f) for f in b["files"]))
                for b in data["blocks"]
            ),
            inputs=dict(data.get("inputs") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed ({type(e).__name__}: {e}); {_FIX}") from None
    for record in exported.all_files:
        record.check_size(export_dir, _FIX)
    return exported


def verify_export(export_dir: Path, exported: ExportedModel) -> None:
    """Every file blocks.json names against its sha256 (reads them all: for a reuse decision, not every open)."""
    for record in exported.all_files:
        record.check_digest(Path(export_dir), None, _FIX)
