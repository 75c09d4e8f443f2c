"""Reading engines from storage: straight from the device where the OS allows it, ahead of need, verified.

`read_file` uses O_DIRECT into a page-aligned buffer so the page cache neither helps nor pollutes (where the
file system refuses O_DIRECT, e.g. tmpfs, it reads through the cache and says so in `ReadStats.direct`).
`Prefetcher` reads a known sequence of engines on a background thread, at most `depth` ahead of the consumer,
checking each file's sha256 on the bytes read; a failure reaches the consumer as the exception itself.
Usage: `with Prefetcher(engines_dir, sequence, depth=1) as reader: data = reader.take(block)`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError

_ALIGN = 4096
_FIX = "it changed after the build (or during this run); rebuild the engines with `make engines`"


@dataclass
class ReadStats:
    bytes_read: int = 0
    read_s: float = 0.0  # time the reader spent reading (background)
    blocked_s: float = 0.0  # time the consumer waited for bytes
    direct: bool | None = None  # True: O_DIRECT took; False: read through the page cache


def read_file(path: Path, stats: ReadStats) -> bytes:
    """The file's bytes, bypassing the page cache when the file system allows O_DIRECT."""
    size = path.stat().st_size
    start = time.perf_counter()
    flag = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:
        fd, flag = os.open(path, os.O_RDONLY), 0
    try:
        if flag:
            try:
                data = _read_direct(fd, size)
                stats.direct = True if stats.direct is None else stats.direct
            except OSError:  # EINVAL: this file system takes no O_DIRECT
                os.close(fd)
                fd, flag = os.open(path, os.O_RDONLY), 0
        if not flag:
            data = b"".join(iter(lambda: os.read(fd, 64 << 20), b""))
            stats.direct = False
    finally:
        os.close(fd)
    stats.bytes_read += len(data)
    stats.read_s += time.perf_counter() - start
    return data


def _read_direct(fd: int, size: int) -> bytes:
    padded = max(_ALIGN, -(-size // _ALIGN) * _ALIGN)
    with mmap.mmap(-1, padded) as buffer:  # page-aligned, as O_DIRECT needs
        view, done = memoryview(buffer), 0
        try:
            while done < size:
                n = os.preadv(fd, [view[done:]], done)
                if n == 0:
                    break
                done += n
            return bytes(view[:size])
        finally:
            view.release()


def read_verified(engines_dir: Path, block, stats: ReadStats) -> bytes:
    """The engine's bytes, after checking every file of the block (size and sha256) against the manifest."""
    main = None
    for record in block.files:
        path = engines_dir / record.path
        if not path.is_file():
            raise UserError(f"{path}: engine file is missing; {_FIX}")
        data = read_file(path, stats)
        if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
            raise UserError(f"{path}: engine file does not match manifest.json (size or sha256); {_FIX}")
        main = data if main is None else main
    return main


class Prefetcher:
    """Reads `sequence` (blocks, in the order they will be needed) in the background.

    At most `depth` engines are read and not yet consumed: the reader waits for a slot before it starts a read,
    and the consumer frees the slot with `done()` once it has loaded the engine and let the bytes go.
    `on_start(n)` is told the bytes a read will hold before it begins (for the memory meter).
    """

    def __init__(self, engines_dir: Path, sequence: list, depth: int, stats: ReadStats, on_start=lambda n: None):
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(max(1, depth))
        self._stop = threading.Event()
        self._stats = stats
        self._thread = threading.Thread(target=self._run, args=(engines_dir, sequence, on_start), daemon=True)

    def _run(self, engines_dir: Path, sequence: list, on_start) -> None:
        for block in sequence:
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            try:
                on_start(sum(f.bytes for f in block.files))
                item = (block.spec.index, read_verified(engines_dir, block, self._stats))
            except Exception as e:  # handed to the consumer, who raises it where it is needed
                item = (block.spec.index, e)
            self._queue.put(item)
            if isinstance(item[1], Exception):
                return

    def take(self, block) -> bytes:
        start = time.perf_counter()
        index, data = self._queue.get()
        self._stats.blocked_s += time.perf_counter() - start
        if isinstance(data, Exception):
            raise data
        assert index == block.spec.index, f"prefetch order: got block {index}, wanted {block.spec.index}"
        return data

    def done(self) -> None:
        """The engine taken last is loaded and its bytes are gone: the reader may start the next read."""
        self._slots.release()

    def __enter__(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
