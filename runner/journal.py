"""The run journal: every finished chunk's items, on disk before the next chunk starts, so nothing finished is lost.

`ce-run --json results.json` keeps `results.journal.jsonl` beside it: a header line with the run's key (the
manifest's sha256, the dataset's path and a digest of its documents, the limit and the batch plan), then one
line per finished chunk with its batch indices and their items (`ItemResult.to_json`), each line flushed and
fsynced. Run again with the same arguments after SIGINT, SIGTERM, SIGKILL or a crash, and the run resumes:
finished batches are skipped and their items taken from the journal, so the results equal an uninterrupted
run's item for item (batches are the same, and an item's score depends only on its batch). A journal of other
engines, another dataset or other batches is refused with the field that differs. A last line cut short by a
kill is dropped. The CLI deletes the journal once results.json is written.
Usage: `journal = RunJournal.open(path, key, announce)`; `journal.finished`; `journal.record(batches, items)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cetrt.errors import UserError
from cetrt.formats.results import ItemResult
from cetrt.outputs import writing

JOURNAL_FORMAT = "cetrt-run-journal"
JOURNAL_VERSION = 1
_WHAT = {"manifest_sha256": "other engines (manifest.json differs)", "dataset": "another dataset path",
         "dataset_digest": "another dataset (its documents differ)", "limit": "another --limit",
         "batches_digest": "other batches (--tokens-per-batch, or engines with another shape plan)"}


def journal_path(json_path: Path) -> Path:
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".journal.jsonl")


def partial_path(json_path: Path) -> Path:
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".partial.json")


def digest(parts) -> str:
    """A short sha256 over the text of `parts` (documents, batch plans): equal inputs, equal digest."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


@dataclass
class RunJournal:
    path: Path
    key: dict
    finished: dict[int, dict[int, ItemResult]] = field(default_factory=dict)  # batch -> {item index: result}
    enabled: bool = True
    _warn: Callable[[str], None] = print

    @classmethod
    def open(cls, path: Path, key: dict, announce: Callable[[str], None] = lambda text: None) -> "RunJournal":
        """Resume from `path` if it holds this run's journal; start one if there is none; refuse another run's."""
        path = Path(path)
        journal = cls(path=path, key=key, _warn=announce)
        if path.exists():
            journal._load()
        if journal.finished:
            items = sum(len(v) for v in journal.finished.values())
            announce(f"  resume       {items} items of {len(journal.finished)} batches from {path}; they are not run again")
        else:
            with writing(path):
                _write_line(path, {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "key": key}, mode="w")
        return journal

    def _load(self) -> None:
        fix = f"run with the same --engines, --dataset, --limit and --tokens-per-batch to resume, or delete {self.path} to start over"
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"{self.path}: cannot read the run journal ({e.strerror}); {fix}") from None
        lines = raw.split(b"\n")
        good = 0  # bytes of whole, parsed lines
        entries = []
        for n, line in enumerate(lines):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                entries.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if n == len(lines) - 1 or all(not rest.strip() for rest in lines[n + 1:]):
                    break  # the last line, cut short by a kill: that chunk is run again
                raise UserError(f"{self.path}:{n + 1}: the run journal is corrupt; delete it to start over") from None
            good += len(line) + 1
        if not entries:  # killed before the header was whole
            return
        header = entries[0]
        if header.get("format") != JOURNAL_FORMAT or header.get("version") != JOURNAL_VERSION:
            raise UserError(f"{self.path}: not a cetrt run journal of version {JOURNAL_VERSION}; {fix}")
        theirs = header.get("key", {})
        for name in self.key:
            if theirs.get(name) != self.key[name]:
                raise UserError(f"{self.path}: this journal is of a run with {_WHAT.get(name, name)}: "
                                f"{theirs.get(name)!r}, now {self.key[name]!r}; {fix}")
        try:
            for entry in entries[1:]:
                for batch, items in zip(entry["batches"], entry["items"]):
                    self.finished[int(batch)] = {int(i): ItemResult.from_json(item) for i, item in items}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.path}: malformed run journal ({type(e).__name__}: {e}); delete it to start over") from None
        if good < len(raw):
            with writing(self.path):
                os.truncate(self.path, good)  # drop the cut line before appending after it

    def record(self, batches: list[int], items: list[dict[int, ItemResult]]) -> None:
        """Append one finished chunk; on disk (fsynced) when this returns. A failure to write warns once and
        the run goes on: its results are still in memory and written at the end."""
        if not self.enabled:
            return
        entry = {"batches": batches, "items": [[[i, r.to_json()] for i, r in sorted(b.items())] for b in items]}
        try:
            _write_line(self.path, entry, mode="a")
        except OSError as e:
            self.enabled = False
            self._warn(f"warning: {self.path}: cannot append to the run journal ({e.strerror}); the run goes on, "
                       "but an interruption from here on loses the chunks after this one")
            return
        for batch, chunk_items in zip(batches, items):
            self.finished[batch] = chunk_items

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _write_line(path: Path, data: dict, mode: str) -> None:
    with open(path, mode + "b") as f:
        f.write((json.dumps(data) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
