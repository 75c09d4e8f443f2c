"""calib.json: the one writer and reader of the calibration stage's output, as one typed record.

The calibration writes it beside blocks.json (export -> calib -> build) and never touches the export's own
files; the build reads it (FP32 islands to apply, tokens per batch) and copies it beside the manifest, and
ce-run and ce-predict read it. It holds the precision check (per-block errors, the FP32 islands and why),
what was measured on this machine (storage, engine load, compute per block at several batch sizes) and the
schedule chosen from it. It belongs to one export: it records the model hash and a digest of the exported
blocks' sha256s, and a calib.json of another model or export is refused.
"Option, else calib.json, else default" is decided in one place, `resolve`, for run, build and predict.
Usage: `write_calib(export_dir, record)`; `record = read_calib_for(engines_dir, model_hash, digest)`;
`tokens = resolve("--tokens-per-batch", option, record, "tokens_per_batch", 4096)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cetrt.errors import UserError
from cetrt.files import read_versioned_json, write_json_atomic

CALIB_FILE = "calib.json"
CALIB_FORMAT = "cetrt-calib"
CALIB_VERSION = 2  # 2: islands are applied by the build from this file; the export is never rewritten
_FIX = "re-run the calibration (`make engines`, or `ce-calib --onnx <export dir>`) or delete it"


def export_digest(blocks) -> str:
    """One digest for an export's blocks (their files' sha256s in order): what ties calib.json to it."""
    text = "\n".join(f.sha256 for block in blocks for f in block.files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CalibRecord:
    model_id: str
    model_hash: str
    export_digest: str
    dtype: str
    dataset: str
    precision: dict  # per block: errors, islands; "islands": [{"index", "block", "nodes", "ops", "reason"}]
    measured: dict  # storage, load, compute; or {"target", "skipped": why} where this machine could not measure
    schedule: dict  # tokens_per_batch, prefetch_depth, each with its reason; or {"note"} when nothing was measured
    seconds: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # export digest, target, dataset, options, versions: unchanged, reused

    def islands(self) -> dict[int, list[str]]:
        """Node names to compute in FP32, by block index: what the build applies to the exported graphs."""
        out: dict[int, list[str]] = {}
        for island in self.precision.get("islands", []):
            out.setdefault(int(island["index"]), []).extend(island["nodes"])
        return {index: sorted(set(nodes)) for index, nodes in out.items()}

    def seconds_per_layer_token(self) -> float | None:
        """Measured seconds per padded token through one decoder layer, at the fastest batch size measured (a chunk
        may take longer, never shorter); None where nothing was measured. The runner sizes its journaled resident
        chunks from it, and ce-predict plans them the same way."""
        timed = [c["s_per_token"] for c in self.measured.get("compute") or [] if c.get("s_per_token")]
        if not timed:
            return None
        return min(timed) / max(1, int(self.measured.get("layers_per_block", 1)))

    @property
    def origin(self) -> str:
        """Where a schedule taken from this record comes from, in words."""
        if "skipped" in self.measured:
            return f"defaults: calib.json measured nothing ({self.measured.get('skipped')})"
        return f"calib.json, measured on {self.measured.get('device_name')} ({self.measured.get('target')})"

    def to_json(self) -> dict:
        return {"format": CALIB_FORMAT, "version": CALIB_VERSION, "model_id": self.model_id,
                "model_hash": self.model_hash, "export_digest": self.export_digest, "dtype": self.dtype,
                "dataset": self.dataset, "precision": self.precision, "measured": self.measured,
                "schedule": self.schedule, "seconds": self.seconds, "inputs": self.inputs}

    @classmethod
    def for_export(cls, exported, dataset: str, precision: dict, measured: dict, schedule: dict,
                   **rest) -> "CalibRecord":
        """A record tied to `exported` (an ExportedModel): its model, hash, precision and blocks' digest."""
        return cls(model_id=exported.model_id, model_hash=exported.model_hash,
                   export_digest=export_digest(exported.blocks), dtype=exported.dtype, dataset=str(dataset),
                   precision=precision, measured=measured, schedule=schedule, **rest)

    @classmethod
    def from_json(cls, data: dict, path: Path) -> "CalibRecord":
        try:
            record = cls(model_id=str(data["model_id"]), model_hash=str(data["model_hash"]),
                         export_digest=str(data["export_digest"]), dtype=str(data["dtype"]),
                         dataset=str(data["dataset"]), precision=dict(data["precision"]),
                         measured=dict(data["measured"]), schedule=dict(data["schedule"]),
                         seconds=dict(data.get("seconds", {})), inputs=dict(data.get("inputs") or {}))
            record.islands()
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: malformed calib.json ({type(e).__name__}: {e}); {_FIX}") from None
        return record


def write_calib(directory: Path, record: CalibRecord) -> Path:
    path = Path(directory) / CALIB_FILE
    write_json_atomic(path, record.to_json())
    return path


def load_calib_file(path: Path) -> CalibRecord:
    """A calib.json by path, format and version checked, not tied to any export (ce-predict --calib)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such calib.json; give the calib.json the calibration wrote")
    data = read_versioned_json(path.parent, path.name, CALIB_FORMAT, CALIB_VERSION, "no such directory", _FIX)[1]
    return CalibRecord.from_json(data, path)


def read_calib_for(directory: Path, model_hash: str, digest: str) -> CalibRecord | None:
    """The directory's calib.json if it has one (else None), refused unless it was made for this export."""
    path = Path(directory) / CALIB_FILE
    if not path.exists():
        return None
    record = load_calib_file(path)
    if record.model_hash != model_hash:
        raise UserError(f"{path}: calibrated for another model ({record.model_id!r}, hash {record.model_hash[:12]}), "
                        f"not this one ({model_hash[:12]}); {_FIX}")
    if record.export_digest != digest:
        raise UserError(f"{path}: calibrated for another export of this model (blocks digest "
                        f"{record.export_digest} vs {digest}); {_FIX}")
    return record


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str  # "given", "calib", or "default"


def resolve(given: Any, record: CalibRecord | None, key: str, default: Any) -> Resolved:
    """An option as given, else the value calib.json's schedule chose, else the default: the one rule that run,
    build and predict follow."""
    if given is not None:
        return Resolved(given, "given")
    chosen = record.schedule.get(key) if record is not None else None
    if chosen is not None:
        return Resolved(chosen, "calib")
    return Resolved(default, "default")
