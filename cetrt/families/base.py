"""The record a model family fills in: everything the stages need to know about one architecture.

A family names the Hugging Face class and `model_type`s it exports, reads its config keys into a `ModelSpec`
(refusing what the export does not implement, with one line), says which inputs its blocks take, counts its
parameters per block (for memory plans and the predictor), lists its published shapes as presets, and builds
the torch modules of its blocks from a loaded model. Adding a family is one module and one registry line
(`cetrt/families/__init__.py`); nothing else branches on a family's name.
Usage: `family = get_family("llama")`; `family.layer_params(spec)`; `embed, layers, head = family.block_modules(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cetrt.errors import UserError
from cetrt.spec import HIDDEN, INPUT_IDS, POSITION_IDS, SEGMENT_IDS, ModelSpec

# Rotary embeddings whose frequencies are fixed once (the export computes cos/sin from the model's own
# `inv_freq` and `attention_scaling`); the others change with the sequence length, which one static graph
# cannot follow.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class Family:
    name: str  # recorded in blocks.json and manifest.json as the spec's `architecture`
    hf_class: str  # the transformers class the export reads
    model_types: tuple[str, ...]  # config.json `model_type` values this family takes
    embed_inputs: tuple[str, ...]  # tensor names (cetrt.spec) the embed block takes
    layer_inputs: tuple[str, ...]  # ... and each layer block
    spec_from_config: Callable[[Any], ModelSpec]
    layer_params: Callable[[ModelSpec], int]  # one decoder layer, weights and biases
    embed_params: Callable[[ModelSpec], int]
    head_params: Callable[[ModelSpec], int]  # final norm, projection out where there is one, LM head
    block_modules: Callable[[Any], tuple]  # loaded HF model -> (embed module, layers(first, last), head module)
    presets: Mapping[str, ModelSpec] = field(default_factory=dict)


ROPE_LAYER_INPUTS = (HIDDEN, POSITION_IDS, SEGMENT_IDS)
TOKEN_EMBED_INPUTS = (INPUT_IDS,)


def rope_type(config: Any) -> str:
    """The config's rotary type, whichever key this transformers version keeps it under."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type") or params.get("type") or "default")


def check_static_rope(config: Any, family: str) -> None:
    kind = rope_type(config)
    if kind not in STATIC_ROPE_TYPES:
        raise UserError(f"{family} config: rope type {kind!r} is not implemented by the export (its frequencies "
                        f"depend on the sequence length); it takes {list(STATIC_ROPE_TYPES)}, e.g. a 4k-context "
                        "variant instead of a 128k one")


def gated_layer_params(spec: ModelSpec, qkv_bias: bool = False) -> int:
    """A pre-norm decoder layer with RMSNorm, grouped attention and a gated MLP (LLaMA, Phi-3, Qwen2)."""
    h, q, kv = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    bias = q + 2 * kv if qkv_bias else 0
    return h * (q + 2 * kv) + bias + q * h + 3 * h * spec.intermediate_size + 2 * h


def token_embed_params(spec: ModelSpec) -> int:
    return spec.vocab_size * spec.embed_dim


def rms_head_params(spec: ModelSpec) -> int:
    """Final RMSNorm weight and an LM head of its own (a tied one is exported as a copy all the same)."""
    return spec.hidden_size + spec.vocab_size * spec.embed_dim


def positions_limit(config: Any) -> int:
    """Positions a packed row may use: the model's, and no more than its sliding window where it has one
    (within the window every token sees the whole row, so scores equal the full-attention ones)."""
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    limit = config.max_position_embeddings
    return min(limit, int(window)) if window else limit
