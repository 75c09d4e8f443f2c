"""A build that was killed resumes: each engine is recorded as it is finished, and reused if nothing changed.

`build-journal.json` beside the engines holds the build's inputs (the same record manifest.json keeps) and, per
engine built so far, the sha256 of the graph it was built from and its files (bytes, sha256). Rerun with the
same inputs, an engine whose graph is the same and whose files still verify is not built again; anything else
is. The journal is written atomically after each engine and removed once manifest.json is written.
Usage: `cache = BuildCache(out, inputs)`; `result = cache.build(name, graph_path, lambda: backend.build(...))`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cetrt.backends.base import BuildResult
from cetrt.errors import UserError
from cetrt.files import FileRecord, sha256_file, write_json_atomic

JOURNAL_FILE = "build-journal.json"


class BuildCache:
    def __init__(self, out: Path, inputs: dict, announce: Callable[[str], None] = lambda text: None):
        self.out, self.inputs, self.path = Path(out), inputs, Path(out) / JOURNAL_FILE
        self.engines: dict[str, dict] = {}
        self.reused: list[str] = []
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}  # a journal cut short: build everything again
        if data.get("inputs") == inputs:
            self.engines = dict(data.get("engines", {}))
            if self.engines:
                announce(f"build: resuming: {len(self.engines)} engine(s) of an interrupted build recorded in {self.path}")

    def keep(self) -> set[Path]:
        """Files of recorded engines: not stale, so not deleted before the build."""
        return {self.out / f["path"] for entry in self.engines.values() for f in entry["files"]}

    def build(self, name: str, graph_path: Path, build: Callable[[], BuildResult]) -> BuildResult:
        graph = sha256_file(graph_path)
        entry = self.engines.get(name)
        if entry is not None and entry.get("graph_sha256") == graph and self._verifies(entry):
            self.reused.append(name)
            return BuildResult(files=tuple(self.out / f["path"] for f in entry["files"]), seconds=entry["seconds"],
                               details=entry["details"])
        result = build()
        self.engines[name] = {"graph_sha256": graph, "seconds": result.seconds, "details": result.details,
                              "files": [FileRecord.of(self.out, f).to_json() for f in result.files]}
        write_json_atomic(self.path, {"inputs": self.inputs, "engines": self.engines})
        return result

    def _verifies(self, entry: dict) -> bool:
        try:
            for record in map(FileRecord.from_json, entry["files"]):
                record.check_size(self.out, "")
                record.check_digest(self.out, None, "")
        except (UserError, KeyError, OSError):
            return False
        return True

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
