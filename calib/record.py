"""calib.json: the one writer and reader of the calibration stage's output.

The calibration writes it beside blocks.json (export -> calib -> build); the build copies it beside the
manifest, and ce-run and ce-predict read it. It holds the precision check (per-block errors, FP32 islands and
why), what was measured on this machine (storage read bandwidth, engine load time, compute per block at
several batch sizes) and the schedule chosen from it. It belongs to one export: it records the model hash and
a digest of the exported blocks' sha256s, and a calib.json of another model or export is refused.
Usage: `write_calib(export_dir, record)`; `record = read_calib(engines_dir, model_hash, digest)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cetrt.errors import UserError
from cetrt.files import read_versioned_json, write_json_atomic

CALIB_FILE = "calib.json"
CALIB_FORMAT = "cetrt-calib"
CALIB_VERSION = 1
_FIX = "re-run the calibration (`make engines`, or `ce-calib --onnx <export dir>`) or delete it"


def export_digest(blocks) -> str:
    """One digest for an export's blocks (their files' sha256s in order): what ties calib.json to it."""
    text = "\n".join(f.sha256 for block in blocks for f in block.files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_calib(directory: Path, record: dict) -> Path:
    path = Path(directory) / CALIB_FILE
    write_json_atomic(path, {"format": CALIB_FORMAT, "version": CALIB_VERSION, **record})
    return path


def load_calib_file(path: Path) -> dict:
    """A calib.json by path, format and version checked, not tied to any export (ce-predict --calib)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such calib.json; give the calib.json the calibration wrote")
    return read_versioned_json(path.parent, path.name, CALIB_FORMAT, CALIB_VERSION, "no such directory", _FIX)[1]


def read_calib(directory: Path, model_hash: str, digest: str) -> dict | None:
    """The directory's calib.json if it has one (else None), refused unless it was made for this export."""
    path = Path(directory) / CALIB_FILE
    if not path.exists():
        return None
    data = load_calib_file(path)
    if data.get("model_hash") != model_hash:
        raise UserError(f"{path}: calibrated for another model ({data.get('model_id')!r}, hash "
                        f"{str(data.get('model_hash'))[:12]}), not this one ({model_hash[:12]}); {_FIX}")
    if data.get("export_digest") != digest:
        raise UserError(f"{path}: calibrated for another export of this model (blocks digest "
                        f"{data.get('export_digest')} vs {digest}); {_FIX}")
    return data
