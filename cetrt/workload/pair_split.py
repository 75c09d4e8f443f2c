"""When a continuation can be tokenized alone and give the ids the harness cuts from the whole text.

The harness tokenizes context + continuation whole and keeps what follows the context's ids (`_encode_pair`):
each ending costs a tokenization of the whole text, context included, four times per item. For a byte-level BPE
tokenizer with GPT-2's split pattern that is the same as tokenizing the continuation alone, where the context
ends in a character that is not whitespace and the continuation starts with whitespace (HellaSwag's ' ' + ending):
- no match of GPT-2's pattern (contractions, ` ?` letters, ` ?` digits, ` ?` other symbols, whitespace runs) holds
  a non-whitespace character followed by whitespace, so every split of the whole text ends at the boundary, and the
  pattern has no look-behind, so the continuation's splits are the same whether the context precedes it or not;
- BPE merges within a split, never across;
- the normalizer that could join characters across the boundary must be absent, no added token may contain
  whitespace (a match across the boundary) or strip the whitespace after it (`rstrip`, which would take the
  continuation's leading space), nothing truncates or pads, and the post-processor may only put a fixed prefix
  in front (BOS), which the context's ids carry.
Anything else keeps the harness's whole-text way (`split_blocker` says why). tests/runner/test_pair_split.py checks
the two ways equal on every HellaSwag item with SmolLM2's tokenizer, and that each condition is needed.
Usage: `if split_blocker(backend) is None and splits_between(context, continuation): ...`.
"""

from __future__ import annotations

import json


def split_blocker(backend) -> str | None:
    """None where `backend` (a `tokenizers.Tokenizer`) tokenizes a whitespace-led continuation the same alone as
    after a context; else what prevents it (a `tokenizers` without the attributes looked at keeps the whole way)."""
    try:
        return _blocker(backend)
    except (AttributeError, TypeError) as e:
        return f"the tokenizer could not be inspected ({type(e).__name__})"


def _blocker(backend) -> str | None:
    from tokenizers import models, pre_tokenizers

    pre = backend.pre_tokenizer
    if not _no_normalizer(backend.normalizer):
        return "a normalizer"
    if not isinstance(pre, pre_tokenizers.ByteLevel) or not pre.use_regex or pre.add_prefix_space:
        return "not the byte-level pre-tokenizer with GPT-2's pattern and no prefix space"
    if not isinstance(backend.model, models.BPE) or backend.model.dropout:
        return "not a BPE model without dropout"
    if backend.truncation is not None or backend.padding is not None:
        return "truncation or padding set"
    for token in backend.get_added_tokens_decoder().values():
        if token.rstrip or any(ch.isspace() for ch in token.content):
            return f"the added token {token.content!r} strips or holds whitespace"
    sample = "a b"
    plain = backend.encode(sample, add_special_tokens=False).ids
    special = backend.encode(sample, add_special_tokens=True).ids
    if special[len(special) - len(plain):] != plain:
        return "special tokens added after the text"
    return None


def _no_normalizer(normalizer) -> bool:
    """None, or an empty Sequence (what transformers 5 saves for a tokenizer without one)."""
    if normalizer is None:
        return True
    try:
        state = json.loads(normalizer.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    return state.get("type") == "Sequence" and not state.get("normalizers")


ASCII_WHITESPACE = frozenset(" \t\n\r\x0b\x0c")  # in the pattern's `\\s` for certain; isspace() holds for more


def splits_between(context: str, continuation: str) -> bool:
    """The boundary the proof above covers: the context ends in a character outside `\\s` (Python's isspace holds
    for all of Unicode's White_Space, so `not isspace()` is on the safe side), the continuation starts in one."""
    return bool(context) and not context[-1].isspace() and continuation[:1] in ASCII_WHITESPACE
