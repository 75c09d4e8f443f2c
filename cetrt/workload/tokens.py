"""HellaSwag requests tokenized exactly as lm-evaluation-harness 0.4.13 tokenizes them.

Harness sources followed (lm_eval 0.4.13): api/model.py `_encode_pair` (trailing spaces of the context move
to the continuation; encode context + continuation whole and split at the context's length), models/huggingface.py `tok_encode` (the tokenizer's
default special tokens, unless the text already starts with the decoded prefix token), and api/task.py
`process_results` (acc_norm divides by the ending's length in characters, `len(choice)`). Where the tokenizer allows it
(cetrt.workload.pair_split), a continuation is tokenized alone instead of whole: the same ids, a third of the work.
Usage: `encoded = encode_docs(tokenizer, docs)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cetrt.workload.encoded_cache import cached
from cetrt.workload.hellaswag import TARGET_DELIMITER, Doc, choices, query
from cetrt.workload.pair_split import split_blocker, splits_between


@dataclass(frozen=True)
class EncodedDoc:
    doc: Doc
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    lengths: tuple[float, ...]  # acc_norm's divisor per ending: len(choice) in characters, as the harness


class HarnessTokenizer:
    """tok_encode and _encode_pair of the harness's HF model, over any Hugging Face tokenizer."""

    def __init__(self, tokenizer, split_pairs: bool = True):
        self.tokenizer = tokenizer
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.prefix_text = tokenizer.decode(prefix) if prefix is not None else None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # continuations tokenized alone where that gives the harness's ids (cetrt.workload.pair_split)
        self.split_pairs = split_pairs and backend is not None and split_blocker(backend) is None

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Batched tok_encode: default special tokens, none for a text that already starts with the prefix."""
        plain = [i for i, t in enumerate(texts) if not self._has_prefix(t)]
        prefixed = [i for i, t in enumerate(texts) if self._has_prefix(t)]
        out: list[list[int]] = [[] for _ in texts]
        for indices, special in ((plain, True), (prefixed, False)):
            if indices:
                for i, row in zip(indices, self._batch([texts[i] for i in indices], special)):
                    out[i] = row
        return out

    def _batch(self, texts: list[str], special: bool) -> list[list[int]]:
        """The ids `tokenizer(texts, add_special_tokens=special)` gives; a fast tokenizer's Rust backend is called
        straight, in parallel and without offsets (transformers' per-text conversion took most of the time)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=special)]
        return [list(row) for row in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]

    def _has_prefix(self, text: str) -> bool:
        return self.prefix_text is not None and text.startswith(self.prefix_text)

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        moved = []
        for context, continuation in pairs:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            moved.append((context, continuation))
        unique = list(dict.fromkeys(c for c, _ in moved))  # each query once, not once per ending
        context_ids = dict(zip(unique, self.encode(unique)))
        alone = [self.split_pairs and splits_between(c, k) for c, k in moved]
        continuations = iter(self._batch([k for (_, k), a in zip(moved, alone) if a], special=False))
        wholes = iter(self.encode([c + k for (c, k), a in zip(moved, alone) if not a]))
        return [(context_ids[c], next(continuations) if a else next(wholes)[len(context_ids[c]):])
                for (c, _), a in zip(moved, alone)]


class TokenizerFile:
    """A fast tokenizer saved as tokenizer.json, loaded with `tokenizers` alone: what the harness's encoding reads
    of a Hugging Face tokenizer (the Rust backend, the BOS and EOS ids, decode), without importing transformers,
    which took 13 s of ce-run's 17 s tokenize step on the GPU machine. tests/runner/test_tokenizer_file.py checks
    it against `AutoTokenizer` on every family's tokenizer and SmolLM2's."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self.bos_token_id = self._token_id(config.get("bos_token"))
        self.eos_token_id = self._token_id(config.get("eos_token"))

    def _token_id(self, token) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self.backend_tokenizer.token_to_id(content) if content is not None else None

    def decode(self, ids) -> str:
        return self.backend_tokenizer.decode([ids] if isinstance(ids, int) else list(ids), skip_special_tokens=False)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def offline_tokenizer(directory: Path):
    """The tokenizer saved in `directory` (an export's or engines' `tokenizer/`), never fetched from the hub: a
    `TokenizerFile` where there is a tokenizer.json, else transformers' `AutoTokenizer`."""
    if (Path(directory) / "tokenizer.json").is_file():
        return TokenizerFile(Path(directory))
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(directory)


def encode_docs(tokenizer, docs: list[Doc]) -> list[EncodedDoc]:
    """Every document's context and continuations as the harness tokenizes them; cached per documents and
    tokenizer (cetrt.workload.encoded_cache)."""
    return cached(tokenizer, docs, lambda: _encode(tokenizer, docs), EncodedDoc)


def harness_requests(docs: list[Doc]) -> list[tuple[str, str]]:
    """Each document's four (context, continuation) requests as the harness makes them: the cleaned query, and the
    delimiter before each cleaned ending (each document's text cleaned once: the harness's regexes)."""
    requests = []
    for doc in docs:
        context = query(doc)
        requests += [(context, TARGET_DELIMITER + choice) for choice in choices(doc)]
    return requests


def _encode(tokenizer, docs: list[Doc]) -> list[EncodedDoc]:
    pairs = harness_requests(docs)
    encoded = HarnessTokenizer(tokenizer).encode_pairs(pairs)
    out = []
    for i, doc in enumerate(docs):
        four = encoded[4 * i : 4 * i + 4]
        out.append(EncodedDoc(
            doc=doc,
            context=tuple(four[0][0]),
            continuations=tuple(tuple(cont) for _, cont in four),
            lengths=tuple(float(len(k) - len(TARGET_DELIMITER)) for _, k in pairs[4 * i : 4 * i + 4]),  # len(choice)
        ))
    return out
