"""File records (relative path, size, sha256) that blocks.json and manifest.json use to pin their files.

Size is checked cheaply whenever a directory is opened; the whole-file sha256 is what the build's reuse logic
and any full verification compare (ONNX files at build, the small files at open). Files the runner streams also
carry a digest of each `chunk_bytes` piece (`chunks`, by the algorithm `chunk_digest` names: xxh3-128 since
issue 12, about 4x sha256's rate per core; records without the field hold sha256 chunks): the reader checks
every piece on its own thread as it lands, beside the other reads, and never hashes the streamed file whole.
`CHUNK_DIGESTS` is the one map from an algorithm's name to its function.
Usage: `rec = FileRecord.of(root, path, chunk_bytes=16 << 20)`; later `rec.check_size(root)`,
`rec.check_digest(root, data)`, `rec.chunk_matches(i, piece)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from cetrt.errors import UserError
from cetrt.outputs import write_atomic, writing

_CHUNK = 8 << 20

# Chunk digest algorithms by the name a record gives (both release the GIL, so reader threads hash in parallel).
CHUNK_DIGESTS: dict[str, Callable[[bytes | memoryview], str]] = {
    "xxh3_128": xxhash.xxh3_128_hexdigest,
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}
CHUNK_DIGEST = "xxh3_128"  # what the build writes now
LEGACY_CHUNK_DIGEST = "sha256"  # what a record without `chunk_digest` holds (written before issue 12)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _digests(path: Path, chunk_bytes: int) -> tuple[str, tuple[str, ...]]:
    """The file's sha256 and, when `chunk_bytes` > 0, the `CHUNK_DIGEST` of each chunk, in one pass."""
    whole, chunks, chunk_digest = hashlib.sha256(), [], CHUNK_DIGESTS[CHUNK_DIGEST]
    with open(path, "rb") as f:
        while piece := f.read(chunk_bytes or _CHUNK):
            whole.update(piece)
            if chunk_bytes:
                chunks.append(chunk_digest(piece))
    return whole.hexdigest(), tuple(chunks)


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the directory that holds the JSON that names it
    bytes: int
    sha256: str
    chunk_bytes: int = 0  # > 0: `chunks` holds the digest of each piece of this size (the last may be shorter)
    chunks: tuple[str, ...] = ()
    chunk_digest: str = CHUNK_DIGEST  # the algorithm of `chunks`, a key of CHUNK_DIGESTS

    @classmethod
    def of(cls, root: Path, path: Path, chunk_bytes: int = 0) -> "FileRecord":
        path = Path(path)
        whole, chunks = _digests(path, chunk_bytes)
        return cls(path=str(path.relative_to(root)), bytes=path.stat().st_size, sha256=whole,
                   chunk_bytes=chunk_bytes if chunks else 0, chunks=chunks, chunk_digest=CHUNK_DIGEST)

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

    def chunk_matches(self, index: int, data: bytes | memoryview) -> bool:
        """Whether `data`, chunk `index` of the file, has the digest the record holds for it."""
        return CHUNK_DIGESTS[self.chunk_digest](data) == self.chunks[index]

    def to_json(self) -> dict:
        data = {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}
        if self.chunks:
            data.update(chunk_bytes=self.chunk_bytes, chunk_digest=self.chunk_digest, chunks=list(self.chunks))
        return data

    @classmethod
    def from_json(cls, data: dict) -> "FileRecord":
        chunks = tuple(str(c) for c in data.get("chunks", ()))
        algorithm = str(data.get("chunk_digest", LEGACY_CHUNK_DIGEST)) if chunks else CHUNK_DIGEST
        if algorithm not in CHUNK_DIGESTS:
            raise UserError(f"{data['path']}: its chunk digests are {algorithm!r}, which this cetrt cannot check (it "
                            f"knows {', '.join(CHUNK_DIGESTS)}); rebuild the engines with `make engines`")
        record = cls(path=data["path"], bytes=int(data["bytes"]), sha256=data["sha256"],
                     chunk_bytes=int(data.get("chunk_bytes", 0)) if chunks else 0, chunks=chunks,
                     chunk_digest=algorithm)
        if chunks and len(chunks) != max(1, -(-record.bytes // record.chunk_bytes)):
            raise ValueError(f"{record.path}: {len(chunks)} chunk digests for {record.bytes} bytes in chunks of "
                             f"{record.chunk_bytes}")
        return record


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
