"""Outputs checked before the work, written atomically, and never lost when writing fails anyway.

`check_output_file` is called before a long stage starts: the directory exists and is writable, the path is
not a directory, and the file system has the bytes the output will need. `write_atomic` writes through a
temporary file, fsync and a rename, and removes the temporary file if anything fails. `writing(path, needed)`
turns the OS's errors (disk full, read-only, permission) into one `UserError` line naming the path and, for
a full disk, the bytes needed and free. `write_with_fallback` is for results that took a run to compute: if
the named place fails, they go to a fallback file that the error names.
Usage: `check_output_file(path, "--json", needed=2 << 20)`; `write_with_fallback(path, text, "--json")`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from cetrt.errors import UserError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def check_output_dir(directory: Path, what: str, needed: int = 0, create: bool = False) -> None:
    """A directory the stage will write into: it exists (or is created), is writable, and has `needed` bytes."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: {what} must be a directory, but this is a file; give another path")
    if not directory.exists():
        if not create:
            raise UserError(f"{directory}: no such directory for {what}; create it or give another path")
        with writing(directory, 0):
            directory.mkdir(parents=True, exist_ok=True)
    _check_writable(directory, what)
    _check_space(directory, what, needed)


def check_output_file(path: Path, what: str, needed: int = 0) -> None:
    """A file the command will write at the end: checked now, before any of the work that produces it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {what} names a directory; give a file path such as {path / 'results.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: the directory {parent} does not exist ({what}); create it with "
                        f"`mkdir -p {parent}` or give another path")
    _check_writable(parent, what)
    _check_space(parent, what, needed)


def _check_writable(directory: Path, what: str) -> None:
    """Try it: os.access says yes to root on a read-only mount."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".cetrt-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{directory}: cannot write here ({what}: {e.strerror}); give a writable path") from None


def _check_space(directory: Path, what: str, needed: int) -> None:
    free = free_bytes(directory)
    if needed and free < needed:
        raise UserError(f"{directory}: {what} needs about {_mib(needed)} but the disk has {_mib(free)} free; "
                        "free some space or write elsewhere")


@contextlib.contextmanager
def writing(path: Path, needed: int = 0) -> Iterator[None]:
    """OS errors while writing `path` become one line: disk full (with the bytes), read-only, no permission."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL:
            place = Path(path) if Path(path).is_dir() else Path(path).parent
            try:
                free = f"{_mib(free_bytes(place))} free"
            except OSError:
                free = "free space unknown"
            need = f"needs about {_mib(needed)}" if needed else "needs more space"
            raise UserError(f"{path}: disk full while writing ({need}, {free}); free some space or write "
                            "elsewhere") from None
        if e.errno in _DENIED:
            raise UserError(f"{path}: cannot write ({e.strerror}); give a writable path") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            raise UserError(f"{path}: cannot write ({e.strerror}); give a file path in an existing directory") from None
        raise


def full_disk_is_why(directory: Path, needed: int, error: BaseException, margin: int = 1 << 20) -> None:
    """For libraries that report a failed write as their own exception (ONNX Runtime's InvalidProtobuf, say):
    if the disk under `directory` is (nearly) full, raise the disk-full line instead; else return."""
    try:
        free = free_bytes(directory)
    except OSError:
        return
    if free < margin:
        raise UserError(f"{directory}: disk full while writing (needs about {_mib(needed)}, {_mib(free)} free; "
                        f"{type(error).__name__}); free some space or write elsewhere") from None


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write through `<path>.tmp`, fsync, rename: a reader sees the old file or the whole new one, never half;
    a failure leaves no temporary file behind."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fallback_path(path: Path) -> Path:
    """Where results go when their own path fails: the system's temp dir, named after the original file."""
    name = Path(path).name or "results.json"
    return Path(tempfile.gettempdir()) / f"cetrt-{os.getpid()}-{name}"


def write_with_fallback(path: Path, data: str, what: str) -> None:
    """Write `data` to `path`; if that fails, to a fallback file, and raise one line naming both."""
    try:
        with writing(path, len(data)):
            write_atomic(path, data)
        return
    except UserError as first:
        reason = str(first)
    spare = fallback_path(path)
    try:
        write_atomic(spare, data)
    except OSError as e:
        raise UserError(f"{reason}; the fallback {spare} failed too ({e.strerror}): the {what} are lost") from None
    raise UserError(f"{reason}; the {what} were written to {spare} instead")
