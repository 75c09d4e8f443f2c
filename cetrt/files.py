"""File records (relative path, size, sha256) that blocks.json and manifest.json use to pin their files.

Size is checked cheaply whenever a directory is opened; the sha256 is checked when the bytes are read anyway
(at build for ONNX files, at load for engines), so no run reads a large file twice just to hash it.
Usage: `rec = FileRecord.of(root, path)`; later `rec.check_size(root)`, `rec.check_digest(root, data)`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError
from cetrt.outputs import write_atomic, writing

_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the directory that holds the JSON that names it
    bytes: int
    sha256: str

    @classmethod
    def of(cls, root: Path, path: Path) -> "FileRecord":
        path = Path(path)
        return cls(path=str(path.relative_to(root)), bytes=path.stat().st_size, sha256=sha256_file(path))

    def check_size(self, root: Path, fix: str) -> None:
        full = root / self.path
        if not full.is_file():
            raise UserError(f"{full}: file named in {root} is missing; {fix}")
        size = full.stat().st_size
        if size != self.bytes:
            raise UserError(f"{full}: {size} bytes, but the record says {self.bytes}; the file changed. {fix}")

    def check_digest(self, root: Path, data: bytes | None, fix: str) -> None:
        """Check the sha256 of bytes already read (or of the file, when `data` is None)."""
        full = root / self.path
        actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(full)
        if actual != self.sha256:
            raise UserError(f"{full}: sha256 {actual[:12]}... does not match the recorded {self.sha256[:12]}...; {fix}")

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict) -> "FileRecord":
        return cls(path=data["path"], bytes=int(data["bytes"]), sha256=data["sha256"])


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a failed run never leaves half a file (nor the
    temporary one); a full disk or a read-only place is one `UserError` naming the path."""
    text = json.dumps(data, indent=2) + "\n"
    with writing(path, len(text)):
        write_atomic(Path(path), text)


def read_json(path: Path, what: str, fix: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no {what} here; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; {fix}")
    return data


def read_versioned_json(directory: Path, name: str, fmt: str, version: int, missing_dir: str, fix: str) -> tuple[Path, dict]:
    """Open `directory/name` and check its format and version; the message names the file and the fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: {missing_dir}")
    path = directory / name
    data = read_json(path, name, fix)
    if data.get("format") != fmt or data.get("version") != version:
        raise UserError(f"{path}: format {data.get('format')!r} version {data.get('version')!r}, but this cetrt "
                        f"reads {fmt} version {version}; {fix}")
    return path, data
