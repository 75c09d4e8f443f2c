"""The streaming reader (issue 12): xxh3-128 chunk digests catch a changed byte in any chunk, records written
before them (sha256 chunks) still verify, an algorithm this cetrt does not know is refused with the file and the
fix named, and the reader tells its host buffers which buffer the next read will take."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from types import SimpleNamespace

import pytest

from cetrt.errors import UserError
from cetrt.files import CHUNK_DIGEST, FileRecord
from cetrt.formats.manifest import MANIFEST_FILE, read_manifest
from cetrt.storage import HostBuffers, Prefetcher, ReadStats, buffer_sizes, read_file, read_verified

CHUNK = 8192  # a multiple of the O_DIRECT alignment, small enough for several chunks in a small file
SIZE = 3 * CHUNK + 1000  # the last chunk is short


def _file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _legacy(record: FileRecord, path) -> dict:
    """The record as a manifest written before issue 12 held it: sha256 chunks, no `chunk_digest` field."""
    data = path.read_bytes()
    step = record.chunk_bytes
    return {"path": record.path, "bytes": record.bytes, "sha256": record.sha256, "chunk_bytes": step,
            "chunks": [hashlib.sha256(data[i:i + step]).hexdigest() for i in range(0, len(data), step)]}


def test_a_new_record_holds_xxh3_chunks_and_reads_back_the_same(tmp_path):
    path = _file(tmp_path)
    record = FileRecord.of(tmp_path, path, chunk_bytes=CHUNK)
    assert record.chunk_digest == CHUNK_DIGEST == "xxh3_128" and len(record.chunks) == 4
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the whole-file sha256 stays
    assert json.loads(json.dumps(record.to_json()))["chunk_digest"] == "xxh3_128"
    assert FileRecord.from_json(record.to_json()) == record
    assert bytes(read_file(path, ReadStats(), record)) == path.read_bytes()


@pytest.mark.parametrize("offset", [0, CHUNK - 1, CHUNK + 17, 2 * CHUNK + 4095, SIZE - 1])
def test_a_changed_byte_in_any_chunk_is_caught(tmp_path, offset):
    path = _file(tmp_path)
    record = FileRecord.of(tmp_path, path, chunk_bytes=CHUNK)
    _flip(path, offset)
    start = offset // CHUNK * CHUNK
    with pytest.raises(UserError, match=rf"does not match manifest.json \(xxh3_128 of bytes {start}-.*make engines"):
        read_file(path, ReadStats(), record)


def test_a_record_with_sha256_chunks_from_before_issue_12_still_verifies(tmp_path):
    path = _file(tmp_path)
    record = FileRecord.from_json(_legacy(FileRecord.of(tmp_path, path, chunk_bytes=CHUNK), path))
    assert record.chunk_digest == "sha256"
    assert bytes(read_file(path, ReadStats(), record)) == path.read_bytes()
    _flip(path, 2 * CHUNK + 5)
    with pytest.raises(UserError, match=rf"sha256 of bytes {2 * CHUNK}-"):
        read_file(path, ReadStats(), record)


def test_an_unknown_chunk_digest_is_refused_with_the_file_and_the_fix(tmp_path):
    data = {**FileRecord.of(tmp_path, _file(tmp_path), chunk_bytes=CHUNK).to_json(), "chunk_digest": "blake9"}
    refused = r"weights.bin: its chunk digests are 'blake9'.*rebuild the engines with `make engines`"
    with pytest.raises(UserError, match=refused):
        FileRecord.from_json(data)


def _streamed(engines, change) -> int:
    """Replace every manifest record with chunk digests by `change(record, path)` (its JSON); returns how many."""
    manifest = json.loads((engines / MANIFEST_FILE).read_text())
    n = 0
    for group in ("blocks", "engine_types"):
        for item in manifest.get(group, []):
            for i, f in enumerate(item["files"]):
                if f.get("chunks"):
                    item["files"][i] = change(FileRecord.from_json(f), engines / f["path"])
                    n += 1
    (engines / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return n


def test_engines_built_before_issue_12_still_stream_and_an_unknown_digest_is_refused_at_open(zoo, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(zoo.engines("llama"), old)
    assert _streamed(old, lambda record, path: _legacy(record, path)) > 0
    manifest = read_manifest(old)
    assert all(f.chunk_digest == "sha256" for b in manifest.blocks for f in b.files if f.chunks)
    for block in manifest.blocks:
        read_verified(old, block, ReadStats())

    unknown = tmp_path / "unknown"
    shutil.copytree(zoo.engines("llama"), unknown)
    _streamed(unknown, lambda record, path: {**record.to_json(), "chunk_digest": "md5"})
    with pytest.raises(UserError, match=r"manifest.json: .*its chunk digests are 'md5'.*`make engines`"):
        read_manifest(unknown)


def test_make_engines_over_engines_from_before_issue_12_records_xxh3_chunks_without_rebuilding(zoo, tmp_path):
    from cetrt.build.engines import BuildOptions, build_engines

    options = BuildOptions(onnx_dir=zoo.onnx("llama"), out_dir=tmp_path / "engines")
    build_engines(options)
    engines = tmp_path / "engines"
    assert _streamed(engines, lambda record, path: _legacy(record, path)) > 0
    files = {p: p.stat().st_mtime_ns for p in engines.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    said: list[str] = []
    manifest = build_engines(options, announce=said.append)
    assert any("up to date" in line and "chunk digests now xxh3_128" in line for line in said), said
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing rebuilt
    assert manifest == read_manifest(engines)
    assert all(f.chunk_digest == "xxh3_128" for f in manifest.all_files if f.chunks)
    for block in manifest.blocks:
        read_verified(engines, block, ReadStats())


def test_a_run_hands_the_gil_to_its_readers_within_half_a_millisecond(monkeypatch):
    """Reader threads take the GIL after every read and check; beside a thread running Python, reads ran 1.33x
    faster with a 0.5 ms hand-over than with Python's 5 ms on the CPU machine (bench/reader_gil.py). A run
    lowers it while it runs, restores it after (also on failure), and CETRT_SWITCH_INTERVAL_MS overrides it."""
    import sys

    from cetrt.runner import evaluate as run
    from cetrt.storage import READERS_SWITCH_INTERVAL_S, readers_first

    seen = []

    def inside(options, announce, stop):
        seen.append(sys.getswitchinterval())
        raise UserError("stop here")

    before = sys.getswitchinterval()
    monkeypatch.setattr(run, "_evaluate", inside)
    with pytest.raises(UserError, match="stop here"):
        run.evaluate(run.RunOptions(engines="unused"))
    assert seen == [pytest.approx(READERS_SWITCH_INTERVAL_S)] and READERS_SWITCH_INTERVAL_S < before
    assert sys.getswitchinterval() == pytest.approx(before)
    monkeypatch.setenv("CETRT_SWITCH_INTERVAL_MS", "5")
    with readers_first():
        assert sys.getswitchinterval() == pytest.approx(0.005)
    monkeypatch.setenv("CETRT_SWITCH_INTERVAL_MS", "fast")
    with pytest.raises(UserError, match="CETRT_SWITCH_INTERVAL_MS='fast'"):
        with readers_first():
            pass


class _RecordingBuffers:
    """Host buffers that note what the reader asks of them, in order (page-aligned, as O_DIRECT needs)."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def take(self, nbytes: int) -> memoryview:
        self.calls.append(("take", nbytes))
        return memoryview(mmap.mmap(-1, nbytes))

    def prepare(self, sizes: list[int]) -> None:
        self.calls.append(("prepare", list(sizes)))


def test_the_reader_asks_for_the_next_reads_buffer_before_it_takes_this_ones(tmp_path):
    """Page-locked memory is made beside a read, not before it: ahead of each read the prefetcher names that read's
    buffers and the next one's, so a pool can make the next while this one reads (1.5-1.9 s of the H200's 7B runs
    went to getting buffers on the reader's critical path)."""
    sizes = [10_000, 3 * CHUNK, 5000]  # page-rounded: 12288, 24576, 8192
    blocks = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"block{index}.bin"
        path.write_bytes(os.urandom(size))
        blocks.append(SimpleNamespace(spec=SimpleNamespace(index=index), files=(FileRecord.of(tmp_path, path),)))
    buffers = _RecordingBuffers()
    with Prefetcher(tmp_path, blocks, depth=1, stats=ReadStats(), buffers=HostBuffers(buffers.take, buffers.prepare)) as reader:
        for block in blocks:
            assert bytes(reader.take(block)) == (tmp_path / f"block{block.spec.index}.bin").read_bytes()
            reader.done()
    assert buffers.calls == [("prepare", [12288, 24576]), ("take", 12288),
                             ("prepare", [24576, 8192]), ("take", 24576),
                             ("prepare", [8192]), ("take", 8192)]
    assert buffer_sizes(blocks) == [12288, 24576, 8192]
