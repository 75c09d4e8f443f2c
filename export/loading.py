"""Load a Hugging Face causal LM of a registered family from a local source (cetrt.sources), in a precision.

The family is found from the config before any weight is read, so an unsupported model is refused at once.
Usage: `loaded = load_model("smollm2-135m", dtype="float32")`; `loaded.model`, `loaded.tokenizer`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cetrt.errors import UserError
from cetrt.families import family_of_model_type, spec_from_config
from cetrt.sources import DEFAULT_MODEL, HINT, ModelSource, model_hash, read_config_json, resolve_source
from cetrt.spec import ModelSpec

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    source: ModelSource
    model: Any  # a transformers PreTrainedModel, eval mode, attention in eager mode
    tokenizer: Any
    spec: ModelSpec
    model_hash: str


def _read_config(source: ModelSource) -> Any:
    """The model's config; a config.json whose model_type no family takes is refused before transformers reads it
    (whose own refusal lists every model type it knows)."""
    from transformers import AutoConfig

    config_file = source.directory / "config.json"
    if not source.gguf_file:
        family_of_model_type(read_config_json(config_file).get("model_type"), str(config_file))
    try:
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{source.directory}: cannot read the model's config ({str(e)[:300]}); {HINT}") from None


def load_model(name_or_path: str, dtype: str = "float32", known_hash: str | None = None) -> LoadedModel:
    """Load weights and tokenizer; the family is found from the config before any weight is read.
    `known_hash`: the model hash the caller computed already (hashing a large model takes a while)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = resolve_source(name_or_path)
    spec = spec_from_config(_read_config(source), str(source.directory))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    # GGUF weights are dequantized in FP32 (transformers keeps them packed when asked for FP16), then cast.
    load_dtype = torch.float32 if source.gguf_file else torch_dtype
    model = AutoModelForCausalLM.from_pretrained(
        source.directory, gguf_file=source.gguf_file, dtype=load_dtype, attn_implementation="eager"
    ).eval().to(torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    except Exception as e:  # tokenizers raises bare Exceptions for a tokenizer.json it cannot build
        raise UserError(f"{source.directory}: cannot load the model's tokenizer ({type(e).__name__}: "
                        f"{str(e)[:200]}); fix or replace its tokenizer files") from None
    return LoadedModel(source=source, model=model, tokenizer=tokenizer, spec=spec,
                       model_hash=known_hash or model_hash(source))
