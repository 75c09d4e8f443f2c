"""HellaSwag documents from the official jsonl (ctx_a, ctx_b), the reduced jsonl (ctx), or a hub id.

The reduced form (../shared/data/hellaswag) lost the ctx_a/ctx_b split; it is read as ctx_a = ctx, ctx_b = "",
which gives the harness's query up to the capitalisation of ctx_b that the file cannot carry.
Every field is type-checked: `label` an integer 0-3 (or its digits as a string, as the hub stores it; 2.7 is
refused, never truncated), `ind` an integer or a string kept as given, text UTF-8; a bad line is one error
naming the file and line. `default_dataset()` is the one default of every command: $CETRT_HELLASWAG, else the
shared jsonl beside the repository, else (only then) the hub id; a hub id is not tried when the hub is
unreachable, so an offline machine gets one line at once instead of retries.
Usage: `docs = load_docs("../shared/data/hellaswag/hellaswag_val.jsonl", limit=200)`; `load_docs(None)`.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError

HUB_DATASET = "Rowan/hellaswag"
DEFAULT_DATASET = HUB_DATASET  # the hub id; the default of the commands is `default_dataset()`
NUM_ENDINGS = 4
# The reduced validation set beside the repository (../shared), offline, unlike the hub id.
SHARED_HELLASWAG = Path(__file__).resolve().parents[3] / "shared" / "data" / "hellaswag" / "hellaswag_val.jsonl"


def default_dataset() -> str:
    """$CETRT_HELLASWAG, else the shared jsonl (beside the repository, or ../shared from here), else the hub id."""
    given = os.environ.get("CETRT_HELLASWAG")
    if given:
        return given
    for candidate in (SHARED_HELLASWAG, Path("../shared/data/hellaswag/hellaswag_val.jsonl").resolve()):
        if candidate.is_file():
            return str(candidate)
    return HUB_DATASET


@dataclass(frozen=True)
class Doc:
    ind: int | str  # as the dataset gives it; the position in the file where it gives none
    activity_label: str
    ctx_a: str
    ctx_b: str
    endings: tuple[str, ...]
    label: int


def doc_from_record(record: dict, where: str) -> Doc:
    """Validate one record of either form; `where` names the file and line for the error."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "ctx_a" in record:
        ctx_a, ctx_b = record["ctx_a"], record.get("ctx_b", "")
    elif "ctx" in record:
        ctx_a, ctx_b = record["ctx"], ""
    else:
        raise UserError(f"{where}: no 'ctx' (reduced form) or 'ctx_a'/'ctx_b' (official form) field")
    endings = record.get("endings")
    if not (isinstance(endings, list) and len(endings) == NUM_ENDINGS and all(isinstance(e, str) for e in endings)):
        raise UserError(f"{where}: 'endings' must be a list of {NUM_ENDINGS} strings")
    label = _label(record.get("label"), where)
    for name, value in (("activity_label", record.get("activity_label")), ("ctx_a", ctx_a), ("ctx_b", ctx_b)):
        if not isinstance(value, str):
            raise UserError(f"{where}: '{name}' must be a string")
    ind = record.get("ind")  # None: the loader numbers it by position
    if ind is not None and (isinstance(ind, bool) or not isinstance(ind, (int, str))):
        raise UserError(f"{where}: 'ind' must be an integer or a string, not {json.dumps(ind)}; fix the line")
    return Doc(ind=ind, activity_label=record["activity_label"], ctx_a=ctx_a, ctx_b=ctx_b, endings=tuple(endings),
               label=label)


def _label(value, where: str) -> int:
    """An integer 0-3, or its digits as a string (the hub's form); anything else is refused, never rounded."""
    wanted = f"'label' must be an integer 0-{NUM_ENDINGS - 1}"
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: {wanted}, not {json.dumps(value)}; fix the line")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise UserError(f"{where}: {wanted}, not {json.dumps(value)}; fix the line")
    if not 0 <= value < NUM_ENDINGS:
        raise UserError(f"{where}: label {value} is outside 0-{NUM_ENDINGS - 1}; fix the line")
    return value


def _load_jsonl(path: Path, limit: int | None) -> list[Doc]:
    docs = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read the dataset ({e.strerror})") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if limit is not None and len(docs) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            doc = doc_from_record(record, f"{path}:{number}")
            docs.append(doc if doc.ind is not None else Doc(**{**doc.__dict__, "ind": len(docs)}))
    if not docs:
        raise UserError(f"{path}: no documents in this file")
    return docs


def _load_with_datasets(source: str, limit: int | None) -> list[Doc]:
    try:
        import datasets
    except ImportError:
        raise UserError("loading a dataset by hub id needs the 'datasets' package: pip install datasets") from None
    if not Path(source).is_dir() and not _hub_reachable():
        os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"  # the local cache only, no retries
    try:
        data = datasets.load_dataset(source, split="validation")
    except Exception as e:  # datasets raises many types (network, format, missing split); all mean the same here
        raise UserError(
            f"cannot load dataset {source!r} with `datasets` ({type(e).__name__}: {str(e)[:200]}); "
            "offline, give the path of a HellaSwag jsonl file instead"
        ) from None
    count = len(data) if limit is None else min(limit, len(data))
    return [doc_from_record({"ind": i, **data[i]}, f"{source}[{i}]") for i in range(count)]


def _hub_reachable(timeout: float = 2.0) -> bool:
    """One quick connection to the hub, unless the environment already says offline."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_docs(source: str | Path | None, limit: int | None = None) -> list[Doc]:
    """A jsonl file by path; a directory or hub id through `datasets` (validation split); None: the default."""
    if source is None:
        source = default_dataset()
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    path = Path(source).expanduser()
    if path.is_file():
        return _load_jsonl(path, limit)
    if path.is_dir():
        return _load_with_datasets(str(path), limit)
    text = str(source)
    if text.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json"):
        raise UserError(f"{path}: no such dataset file; give a HellaSwag jsonl path or a hub id such as {HUB_DATASET}")
    return _load_with_datasets(text, limit)


# The task's text, as lm-eval 0.4.13's tasks/hellaswag/utils.py (`preprocess`, `process_docs`) and its yaml
# (`target_delimiter`, the default " ") make it.
TARGET_DELIMITER = " "


_BRACKETED = re.compile("\\[.*?\\]")


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    text = text.replace("  ", " ")
    return text


def query(doc: Doc) -> str:
    return preprocess(doc.activity_label + ": " + doc.ctx_a + " " + doc.ctx_b.capitalize())


def choices(doc: Doc) -> list[str]:
    return [preprocess(ending) for ending in doc.endings]
