"""A cache of tokenized documents, keyed by the documents' text and the tokenizer, so a second run (or calib
after export) does not tokenize the dataset again.

The key is a sha256 over this module's format version, the source of the code that builds the requests and
tokenizes them (so a changed cetrt never reuses an older cetrt's encoding), the tokenizer's full serialization
(its Rust backend's JSON, which holds the vocabulary, merges, normalizer and post-processor) with its BOS/EOS
ids, and every field of every document. A hit returns exactly what `encode_docs` computed; a missing, unreadable or mismatched entry
is recomputed and rewritten (the cache is never a reason to fail). Entries are written beside and renamed, so a
killed run leaves no half entry. `CETRT_CACHE_DIR` moves it; `CETRT_NO_CACHE=1` turns it off.
Usage: `encoded = cached(tokenizer, docs, lambda: encode_docs(tokenizer, docs))`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from cetrt.switches import switch

_FORMAT = "cetrt-encoded-1"


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cetrt"
    return Path(os.environ.get("CETRT_CACHE_DIR", default))


def _tokenizer_identity(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # a slow tokenizer: no full serialization to key on, so no cache
    return json.dumps([backend.to_str(), tokenizer.bos_token_id, tokenizer.eos_token_id])


@functools.lru_cache(maxsize=1)
def _code_identity() -> bytes:
    """The workload modules' source: the requests' text (hellaswag), their tokenization (tokens), this cache."""
    digest = hashlib.sha256()
    for name in ("hellaswag.py", "tokens.py", "encoded_cache.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.digest()


def cache_key(tokenizer, docs) -> str | None:
    identity = _tokenizer_identity(tokenizer)
    if identity is None:
        return None
    digest = hashlib.sha256(_FORMAT.encode())
    digest.update(_code_identity())
    digest.update(hashlib.sha256(identity.encode()).digest())
    for doc in docs:
        digest.update(json.dumps([doc.ind, doc.activity_label, doc.ctx_a, doc.ctx_b, doc.endings, doc.label]).encode())
    return digest.hexdigest()


def _save(path: Path, encoded) -> None:
    contexts = [e.context for e in encoded]
    continuations = [c for e in encoded for c in e.continuations]
    arrays = {
        "context": np.fromiter((t for c in contexts for t in c), dtype=np.int64),
        "context_lengths": np.array([len(c) for c in contexts], dtype=np.int64),
        "continuation": np.fromiter((t for c in continuations for t in c), dtype=np.int64),
        "continuation_lengths": np.array([len(c) for c in continuations], dtype=np.int64),
        "endings": np.array([len(e.continuations) for e in encoded], dtype=np.int64),
        "lengths": np.array([x for e in encoded for x in e.lengths], dtype=np.float64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, path)


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[tuple[int, ...]]:
    values = flat.tolist()
    out, start = [], 0
    for n in lengths.tolist():
        out.append(tuple(values[start:start + n]))
        start += n
    return out


def _load(path: Path, docs, make_encoded):
    with np.load(path) as data:
        contexts = _split(data["context"], data["context_lengths"])
        continuations = _split(data["continuation"], data["continuation_lengths"])
        endings, lengths = data["endings"].tolist(), data["lengths"].tolist()
    if len(contexts) != len(docs) or sum(endings) != len(continuations) or len(lengths) != len(continuations):
        raise ValueError("cache entry does not match the documents")
    out, k = [], 0
    for doc, context, n in zip(docs, contexts, endings):
        out.append(make_encoded(doc=doc, context=context, continuations=tuple(continuations[k:k + n]),
                                lengths=tuple(lengths[k:k + n])))
        k += n
    return out


def cached(tokenizer, docs, compute: Callable[[], list], make_encoded) -> list:
    """`compute()`'s result for these documents and this tokenizer, from the cache when it holds it."""
    key = None if switch("CETRT_NO_CACHE", default=False) else cache_key(tokenizer, docs)
    if key is None:
        return compute()
    path = cache_root() / "encoded" / f"{key}.npz"
    if path.is_file():
        try:
            return _load(path, docs, make_encoded)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: recompute below and replace it
    encoded = compute()
    try:
        _save(path, encoded)
    except OSError:
        pass  # a read-only or full cache directory costs the next run a tokenization, nothing else
    return encoded
