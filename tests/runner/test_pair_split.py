"""Continuations tokenized alone (cetrt.workload.pair_split) give the ids the harness cuts from the whole text.

The whole-text way (`split_pairs=False`) is the harness's `_encode_pair`, tied to lm-evaluation-harness itself in
tests/runner/test_harness_parity.py. Each refusal below is a tokenizer on which the short cut would give other ids.
"""

from __future__ import annotations

import pytest
from tokenizers import AddedToken, normalizers, processors

from cetrt.calib.presets import load_counting_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.pair_split import split_blocker, splits_between
from cetrt.workload.tokens import HarnessTokenizer, TokenizerFile, harness_requests


def both_ways(tokenizer, pairs):
    fast = HarnessTokenizer(tokenizer)
    return fast, fast.encode_pairs(pairs), HarnessTokenizer(tokenizer, split_pairs=False).encode_pairs(pairs)


def test_every_hellaswag_item_with_smollm2s_tokenizer(hellaswag_path):
    tokenizer, _ = load_counting_tokenizer(None)
    fast, split, whole = both_ways(tokenizer, harness_requests(load_docs(str(hellaswag_path))))
    assert fast.split_pairs  # the short cut taken, not the whole way twice
    assert len(split) == 40168
    assert split == whole


def test_the_tiny_tokenizer_with_a_bos(tokenizer, hellaswag_path):
    fast, split, whole = both_ways(tokenizer, harness_requests(load_docs(str(hellaswag_path), 300)))
    assert fast.split_pairs
    assert split == whole
    assert all(context[0] == tokenizer.bos_token_id for context, _ in split)


def variant(tokenizer, tmp_path, change) -> TokenizerFile:
    """The tiny tokenizer with one change, saved and loaded as ce-run loads one."""
    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    change(backend)
    backend.save(str(tmp_path / "tokenizer.json"))
    return TokenizerFile(tmp_path)


def naive(tokenizer, pairs):
    """Context and continuation each alone, with no conditions: what the short cut would give everywhere."""
    harness = HarnessTokenizer(tokenizer, split_pairs=False)
    return [(harness.encode([c])[0], harness._batch([k], special=False)[0]) for c, k in pairs]


CASES = {
    "an added token that strips the whitespace after it": (
        lambda b: b.add_tokens([AddedToken("END", rstrip=True)]), [("a END", " b c")]),
    "an added token holding whitespace": (
        lambda b: b.add_tokens([AddedToken("d b", normalized=False)]), [("the end", " b x")]),
    "special tokens after the text": (
        lambda b: setattr(b, "post_processor", processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])), [("He ran", " away")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tokenizer_the_short_cut_would_get_wrong_keeps_the_whole_way(tokenizer, tmp_path, case):
    change, pairs = CASES[case]
    changed = variant(tokenizer, tmp_path, change)
    assert split_blocker(changed.backend_tokenizer) is not None
    assert not HarnessTokenizer(changed).split_pairs
    _, split, whole = both_ways(changed, pairs)
    assert split == whole
    assert naive(changed, pairs) != whole  # the condition is needed: the short cut differs here


def test_a_normalizer_keeps_the_whole_way_and_an_empty_one_does_not(tokenizer, tmp_path, hellaswag_path):
    """transformers 5 saves a tokenizer without a normalizer with an empty Sequence (SmolLM2's export on the GPU
    machine, 2026-12-04): that one is no normalizer."""
    for normalizer in (normalizers.Lowercase(), normalizers.Sequence([normalizers.Lowercase()])):
        changed = variant(tokenizer, tmp_path, lambda b, n=normalizer: setattr(b, "normalizer", n))
        assert split_blocker(changed.backend_tokenizer) == "a normalizer"
    empty = variant(tokenizer, tmp_path, lambda b: setattr(b, "normalizer", normalizers.Sequence([])))
    fast, split, whole = both_ways(empty, harness_requests(load_docs(str(hellaswag_path), 100)))
    assert fast.split_pairs
    assert split == whole


def test_another_pre_tokenizer_keeps_the_whole_way(tokenizer, tmp_path):
    from tokenizers import pre_tokenizers

    spaced = variant(tokenizer, tmp_path, lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Metaspace()))
    assert split_blocker(spaced.backend_tokenizer).startswith("not the byte-level pre-tokenizer")


def trained_on(lines: list[str], tmp_path) -> TokenizerFile:
    """A byte-level BPE tokenizer as SmolLM2's is made, learning its merges from `lines`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    backend.save(str(tmp_path / "tokenizer.json"))
    return TokenizerFile(tmp_path)


def test_a_boundary_inside_one_split_is_cut_the_whole_way(tmp_path):
    """U+001C is whitespace to Python's isspace but not to the pattern's \\s: after '.', the pattern keeps '.\\x1c'
    in one split, where a tokenizer that learnt to merge the two gives one token across the boundary."""
    tokenizer = trained_on(["He stopped.\x1c then left"] * 50, tmp_path)
    pairs = [("He stopped.", "\x1c then left"), ("He stopped.", " then left"), ("He stopped", "")]
    assert [splits_between(c, k) for c, k in pairs] == [False, True, False]
    assert naive(tokenizer, pairs[:1]) != HarnessTokenizer(tokenizer, split_pairs=False).encode_pairs(pairs[:1])
    fast, split, whole = both_ways(tokenizer, pairs)
    assert fast.split_pairs
    assert split == whole


def test_a_tokenizer_that_cannot_be_inspected_keeps_the_whole_way():
    class Opaque:  # a backend without the attributes the conditions read
        normalizer = None

    assert split_blocker(Opaque()) == "the tokenizer could not be inspected (AttributeError)"
