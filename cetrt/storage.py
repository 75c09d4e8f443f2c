"""Reading engines and weights from storage at the device's speed: direct, several requests in flight, verified
as the bytes land, ahead of need.

`read_file` splits a file into requests of `ReadPlan.request_bytes` and keeps `ReadPlan.requests_in_flight`
of them going at once (a thread pool of `preadv`, which releases the GIL), with O_DIRECT into one page-aligned
buffer so the page cache neither helps nor pollutes (where the file system refuses O_DIRECT, e.g. tmpfs, it
reads through the cache and says so in `ReadStats.direct`). Each request's bytes are checked on the thread
that read them, against the per-chunk digest the build recorded (`FileRecord.chunks`: xxh3-128, or sha256 in
records from before issue 12; both release the GIL too), so the check runs beside the other reads instead of
after the whole file; a file recorded without chunk digests is checked whole against its sha256. The result
is the buffer itself (a memoryview, no copy): NumPy weight arrays are views of it. `Prefetcher` reads a known sequence of blocks on a background thread, at most `depth` blocks
ahead of the consumer, and tells the host buffers (`HostBuffers.prepare`) which sizes the read after the one under
way will take, so page-locked memory is made beside a read rather than before it; a failure reaches the consumer
as the exception itself.
Usage: `with Prefetcher(engines_dir, sequence, depth=1, stats=stats) as reader: data = reader.take(block)`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cetrt.errors import UserError
from cetrt.files import FileRecord

ALIGN = 4096
# New buffers get their pages in one call rather than a fault each during the read
_ANONYMOUS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
DEFAULT_REQUEST_BYTES = 16 << 20  # also the chunk the build records a digest for
DEFAULT_REQUESTS_IN_FLIGHT = 4
READERS_SWITCH_INTERVAL_S = 0.0005  # the GIL's hand-over while readers run (Python's default: 5 ms)
_FIX = "it changed after the build (or during this run); rebuild the engines with `make engines`"


@contextmanager
def readers_first():
    """While a run's readers work: hand the GIL over within 0.5 ms instead of Python's 5 ms. A reader thread takes
    the GIL three times a request (after its preadv, after its chunk check, to take the next); while the executor's
    thread runs Python (binding, queueing block after block on a GPU without waiting for it), each of those waits up
    to the switch interval, against 8-9 ms a 16 MiB request takes at 1.9 GB/s. On the 2-core CPU machine, reads
    with their checks beside a busy Python thread ran 1.33x faster with 0.5 ms than with 5 ms (medians of 6
    alternating rounds; alone, 1.06x: bench/reader_gil.py, bench/results/reader_gil_cpu.json). CETRT_SWITCH_INTERVAL_MS sets another (5: Python's
    default, for A/B); the interval in force before is restored after."""
    setting = os.environ.get("CETRT_SWITCH_INTERVAL_MS", "").strip()
    try:
        wanted = float(setting) / 1e3 if setting else READERS_SWITCH_INTERVAL_S
    except ValueError:
        raise UserError(f"CETRT_SWITCH_INTERVAL_MS={setting!r}: give milliseconds, e.g. 0.5") from None
    if wanted <= 0:
        raise UserError(f"CETRT_SWITCH_INTERVAL_MS={setting!r}: give a positive number of milliseconds, e.g. 0.5")
    before = sys.getswitchinterval()
    sys.setswitchinterval(wanted)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@dataclass(frozen=True)
class ReadPlan:
    """How the reader talks to the device: request size and how many requests are in flight (calib measures
    the best pair on the target's storage; the defaults suit NVMe and are not worse on slower devices)."""

    request_bytes: int = DEFAULT_REQUEST_BYTES
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT

    def __post_init__(self):
        if self.request_bytes < ALIGN or self.request_bytes % ALIGN or self.requests_in_flight < 1:
            raise UserError(f"read requests of {self.request_bytes} bytes, {self.requests_in_flight} in flight: the "
                            f"size must be a positive multiple of {ALIGN} and at least one request in flight")


def buffer_bytes(size: int) -> int:
    """The buffer a file of `size` bytes is read into: whole pages, as O_DIRECT reads them."""
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


READS_PREPARED = 2  # the read about to start and the next: the next one's buffer is made while this one reads


def upcoming(sequence: Sequence, position: int) -> Sequence:
    """The blocks whose buffers the reader asks for before the read at `position`."""
    return sequence[position : position + READS_PREPARED]


def buffer_sizes(blocks: list) -> list[int]:
    """The buffers reading these blocks' files takes, file by file."""
    return [buffer_bytes(record.bytes) for block in blocks for record in block.files]


@dataclass(frozen=True)
class HostBuffers:
    """Where the reader puts what it reads, when not in plain memory: `take(n)` gives a buffer of at least n bytes
    (page-locked memory a GPU copies from; None: plain memory after all), and `prepare(sizes)` says which buffers
    the next reads will take, so that a pool can make them beside the read under way (cudaHostAlloc pins page by
    page: 1.5-1.9 s of a 7B run's reads on the H200 went to getting buffers before each read, the reader's
    critical path)."""

    take: Callable[[int], memoryview | None]
    prepare: Callable[[list[int]], None] = lambda sizes: None


@dataclass
class ReadStats:
    bytes_read: int = 0
    read_s: float = 0.0  # time the reader spent reading and checking (background), file by file
    blocked_s: float = 0.0  # time the consumer waited for bytes
    direct: bool | None = None  # True: O_DIRECT took; False: read through the page cache
    buffer_s: float = 0.0  # time the reader spent getting buffers to read into (page-locked: cudaHostAlloc)
    slot_wait_s: float = 0.0  # time a prefetcher's reader waited for a read-ahead slot (the disk idle meanwhile)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_read / self.read_s if self.read_s > 0 else 0.0


class ReadPool:
    """One thread pool for the requests of every file a reader reads (threads made once, not per file), and
    where the bytes go: the backend's `HostBuffers` (e.g. page-locked memory a GPU copies from), else plain
    aligned memory."""

    def __init__(self, plan: ReadPlan, buffers: HostBuffers | None = None):
        self.plan = plan
        self.buffers = buffers
        self.executor = ThreadPoolExecutor(max_workers=plan.requests_in_flight, thread_name_prefix="cetrt-read")
        self._buffers: list[mmap.mmap] = []

    def buffer(self, nbytes: int) -> memoryview:
        """Memory for one file's bytes. Plain buffers are reused once nothing refers to them any more (no array
        or session still views them): O_DIRECT into fresh pages faults each one in during the read, which ran
        the reader at 40% of the disk's rate on the CPU machine (bench/results/cpu_read.json)."""
        given = self.buffers.take(nbytes) if self.buffers is not None else None
        if given is not None and given.nbytes >= nbytes:
            return given
        for buffer in self._buffers:
            # referenced only by the list, this loop and getrefcount's argument: no view of it is alive
            if nbytes <= len(buffer) <= 2 * nbytes and sys.getrefcount(buffer) <= 3:
                return memoryview(buffer)[:nbytes]
        buffer = mmap.mmap(-1, nbytes, flags=_ANONYMOUS)  # page-aligned, as O_DIRECT needs
        self._buffers.append(buffer)
        return memoryview(buffer)

    def prepare(self, blocks: list) -> None:
        """The next reads will be of these blocks' files: let the host buffers get ready for them."""
        if self.buffers is not None:
            self.buffers.prepare(buffer_sizes(blocks))

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def _open(path: Path) -> tuple[int, bool]:
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            return os.open(path, os.O_RDONLY | flag), True
        except OSError:
            pass
    return os.open(path, os.O_RDONLY), False


def _read_range(fd: int, view: memoryview, start: int, length: int) -> int:
    done = 0
    while done < length:
        n = os.preadv(fd, [view[start + done : start + length]], start + done)
        if n == 0:
            break
        done += n
    return done


def _request(fd: int, view: memoryview, start: int, length: int, size: int, record: FileRecord | None, index: int,
             path: Path) -> None:
    """Read [start, start + length) (length padded to the alignment O_DIRECT wants) and, given the record of a
    file with chunk digests, check it as chunk `index`."""
    got = _read_range(fd, view, start, length)
    real = min(length, size - start)
    if got < real:
        raise UserError(f"{path}: ended after {start + got} of {size} bytes; {_FIX}")
    if record is not None and not record.chunk_matches(index, view[start : start + real]):
        raise UserError(f"{path}: does not match manifest.json ({record.chunk_digest} of bytes "
                        f"{start}-{start + real}); {_FIX}")


def read_file(path: Path, stats: ReadStats, record: FileRecord | None = None, pool: ReadPool | None = None,
              plan: ReadPlan = ReadPlan()) -> memoryview:
    """The file's bytes (a read-only view of a page-aligned buffer), read with several requests in flight and,
    given its `record`, checked against it: per chunk where the record has chunk digests, else whole."""
    size = path.stat().st_size
    if record is not None and size != record.bytes:
        raise UserError(f"{path}: {size} bytes, but manifest.json says {record.bytes}; {_FIX}")
    own_pool = pool is None
    pool = pool or ReadPool(plan)
    request = record.chunk_bytes if record is not None and record.chunks else pool.plan.request_bytes
    padded = buffer_bytes(size)
    asked = time.perf_counter()
    view = pool.buffer(padded).cast("B")
    start_time = time.perf_counter()
    stats.buffer_s += start_time - asked
    try:
        for attempt in (0, 1):
            fd, direct = _open(path)
            try:
                starts = range(0, size, request) if size else []
                chunked = record if record is not None and record.chunks else None
                futures = [pool.executor.submit(_request, fd, view, s, min(request, padded - s), size, chunked, i, path)
                           for i, s in enumerate(starts)]
                errors = [f.exception() for f in futures]
            finally:
                os.close(fd)
            einval = [e for e in errors if isinstance(e, OSError)]
            if direct and einval and attempt == 0:
                continue  # this file system takes no O_DIRECT (EINVAL): read it again through the page cache
            for error in errors:
                if error is not None:
                    raise error
            break
    finally:
        if own_pool:
            pool.close()
    if record is not None and not record.chunks and hashlib.sha256(view[:size]).hexdigest() != record.sha256:
        raise UserError(f"{path}: does not match manifest.json (sha256); {_FIX}")
    stats.direct = direct if stats.direct is None else (stats.direct and direct)
    stats.bytes_read += size
    stats.read_s += time.perf_counter() - start_time
    return view[:size].toreadonly()


def read_verified(engines_dir: Path, block, stats: ReadStats, pool: ReadPool | None = None) -> memoryview:
    """The block's first file (its engine or weights file), after reading and checking every file of the block
    against the manifest."""
    main = None
    for record in block.files:
        path = engines_dir / record.path
        if not path.is_file():
            raise UserError(f"{path}: engine file is missing; {_FIX}")
        data = read_file(path, stats, record, pool)
        main = data if main is None else main
    return main


class Prefetcher:
    """Reads `sequence` (blocks, in the order they will be needed) in the background.

    At most `depth` blocks are read and not yet consumed: the reader waits for a slot before it starts a read,
    and the consumer frees the slot with `done()` once it has loaded the block and let the bytes go.
    `on_start(n)` is told the bytes a read will hold before it begins (for the memory meter).
    """

    def __init__(self, engines_dir: Path, sequence: list, depth: int, stats: ReadStats, on_start=lambda n: None,
                 plan: ReadPlan = ReadPlan(), buffers: HostBuffers | None = None):
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(max(1, depth))
        self._stop = threading.Event()
        self._stats = stats
        self._pool = ReadPool(plan, buffers)
        self._thread = threading.Thread(target=self._run, args=(engines_dir, sequence, on_start), daemon=True)

    def _run(self, engines_dir: Path, sequence: list, on_start) -> None:
        for position, block in enumerate(sequence):
            waiting = time.perf_counter()
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            self._stats.slot_wait_s += time.perf_counter() - waiting
            if self._stop.is_set():
                return
            try:
                self._pool.prepare(upcoming(sequence, position))
                on_start(sum(f.bytes for f in block.files))
                item = (block.spec.index, read_verified(engines_dir, block, self._stats, self._pool))
            except Exception as e:  # handed to the consumer, who raises it where it is needed
                item = (block.spec.index, e)
            self._queue.put(item)
            if isinstance(item[1], Exception):
                return

    def take(self, block, waits_count: bool = True) -> memoryview:
        """The block's bytes, once read. The wait counts as blocked on storage unless `waits_count` is off (a
        loader thread taking blocks ahead of the executor, which counts its own waits); after the prefetcher
        is closed, `PrefetchClosed`."""
        start = time.perf_counter()
        index, data = self._queue.get()
        if waits_count:
            self._stats.blocked_s += time.perf_counter() - start
        if isinstance(data, BaseException):
            raise data
        assert index == block.spec.index, f"prefetch order: got block {index}, wanted {block.spec.index}"
        return data

    def done(self) -> None:
        """The block taken last is loaded and its bytes are gone: the reader may start the next read."""
        self._slots.release()

    def __enter__(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._queue.put((None, PrefetchClosed()))  # a consumer still waiting in take() stops waiting
        self._pool.close()


class PrefetchClosed(Exception):
    """Raised by `Prefetcher.take` once the prefetcher is closed: the run is over or failed elsewhere."""
