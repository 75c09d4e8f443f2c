"""HellaSwag documents from the official jsonl (ctx_a, ctx_b), the reduced jsonl (ctx), or a hub id.

The reduced form (../shared/data/hellaswag) lost the ctx_a/ctx_b split; it is read as ctx_a = ctx, ctx_b = "",
which gives the harness's query up to the capitalisation of ctx_b that the file cannot carry.
Usage: `docs = load_docs("../shared/data/hellaswag/hellaswag_val.jsonl", limit=200)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError

DEFAULT_DATASET = "Rowan/hellaswag"
NUM_ENDINGS = 4


@dataclass(frozen=True)
class Doc:
    ind: int
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
    try:
        label = int(record["label"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: 'label' must be an integer 0-{NUM_ENDINGS - 1}") from None
    if not 0 <= label < NUM_ENDINGS:
        raise UserError(f"{where}: label {label} is outside 0-{NUM_ENDINGS - 1}")
    for name, value in (("activity_label", record.get("activity_label")), ("ctx_a", ctx_a), ("ctx_b", ctx_b)):
        if not isinstance(value, str):
            raise UserError(f"{where}: '{name}' must be a string")
    return Doc(
        ind=int(record.get("ind", -1)), activity_label=record["activity_label"], ctx_a=ctx_a, ctx_b=ctx_b,
        endings=tuple(endings), label=label,
    )


def _load_jsonl(path: Path, limit: int | None) -> list[Doc]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            doc = doc_from_record(record, f"{path}:{number}")
            docs.append(doc if doc.ind >= 0 else Doc(**{**doc.__dict__, "ind": len(docs)}))
    if not docs:
        raise UserError(f"{path}: no documents in this file")
    return docs


def _load_with_datasets(source: str, limit: int | None) -> list[Doc]:
    try:
        import datasets
    except ImportError:
        raise UserError("loading a dataset by hub id needs the 'datasets' package: pip install datasets") from None
    try:
        data = datasets.load_dataset(source, split="validation")
    except Exception as e:  # datasets raises many types (network, format, missing split); all mean the same here
        raise UserError(
            f"cannot load dataset {source!r} with `datasets` ({type(e).__name__}: {str(e)[:200]}); "
            "offline, give the path of a HellaSwag jsonl file instead"
        ) from None
    count = len(data) if limit is None else min(limit, len(data))
    return [doc_from_record({"ind": i, **data[i]}, f"{source}[{i}]") for i in range(count)]


def load_docs(source: str | Path, limit: int | None = None) -> list[Doc]:
    """A jsonl file by path; a directory or hub id through `datasets` (validation split)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    path = Path(source).expanduser()
    if path.is_file():
        return _load_jsonl(path, limit)
    if path.is_dir():
        return _load_with_datasets(str(path), limit)
    text = str(source)
    if text.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json"):
        raise UserError(f"{path}: no such dataset file; give a HellaSwag jsonl path or a hub id such as {DEFAULT_DATASET}")
    return _load_with_datasets(text, limit)


# The task's text, as lm-eval 0.4.13's tasks/hellaswag/utils.py (`preprocess`, `process_docs`) and its yaml
# (`target_delimiter`, the default " ") make it.
TARGET_DELIMITER = " "


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def query(doc: Doc) -> str:
    return preprocess(doc.activity_label + ": " + doc.ctx_a + " " + doc.ctx_b.capitalize())


def choices(doc: Doc) -> list[str]:
    return [preprocess(ending) for ending in doc.endings]
