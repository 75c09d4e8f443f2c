"""The cache of tokenized documents (cetrt.workload.encoded_cache): a hit gives exactly what tokenizing gave, and
anything that could change the ids (the tokenizer, a document's text, an unreadable entry) tokenizes again.

A stale hit would not fail loudly anywhere else: the run would score other tokens than the harness's. Each test
has its own cache directory (CETRT_CACHE_DIR) and counts the real tokenizations through `encode_docs`.
"""

from __future__ import annotations

import dataclasses

import pytest
from tokenizers import processors

import cetrt.workload.tokens as tokens_module
from cetrt.workload.encoded_cache import cache_root
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import encode_docs


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """encode_docs with its own cache directory; the list grows by one per real tokenization."""
    monkeypatch.setenv("CETRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CETRT_NO_CACHE", raising=False)
    calls, real = [], tokens_module._encode

    def encode(tokenizer, docs):
        calls.append(len(docs))
        return real(tokenizer, docs)

    monkeypatch.setattr(tokens_module, "_encode", encode)
    return calls


def test_a_hit_is_exactly_what_tokenizing_gave(counted, tokenizer, hellaswag_path):
    docs = load_docs(hellaswag_path, 60)
    first = encode_docs(tokenizer, docs)
    second = encode_docs(tokenizer, docs)
    assert counted == [60] and second == first
    assert len(list((cache_root() / "encoded").glob("*.npz"))) == 1


def test_another_tokenizer_or_text_tokenizes_again(counted, tokenizer, hellaswag_path):
    docs = load_docs(hellaswag_path, 20)
    encode_docs(tokenizer, docs)
    changed = dataclasses.replace(docs[7], endings=(docs[7].endings[0] + " more",) + docs[7].endings[1:])
    other_docs = docs[:7] + [changed] + docs[8:]
    assert encode_docs(tokenizer, other_docs)[7].continuations[0] != encode_docs(tokenizer, docs)[7].continuations[0]
    no_bos = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    no_bos.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert encode_docs(no_bos, docs) != encode_docs(tokenizer, docs)
    assert counted == [20, 20, 20]  # the first, the changed text, the other tokenizer; every repeat a hit


def test_an_unreadable_entry_is_tokenized_again_and_replaced(counted, tokenizer, hellaswag_path):
    docs = load_docs(hellaswag_path, 10)
    first = encode_docs(tokenizer, docs)
    [entry] = (cache_root() / "encoded").glob("*.npz")
    entry.write_bytes(b"not an npz")
    assert encode_docs(tokenizer, docs) == first
    assert encode_docs(tokenizer, docs) == first
    assert counted == [10, 10]  # once more for the broken entry, then a hit on its replacement
    assert not list((cache_root() / "encoded").glob("*.partial"))
