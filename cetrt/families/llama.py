"""The LLaMA family (`LlamaForCausalLM`): its record, and its blocks for export.

Blocks: embedding, a run of decoder layers, the scoring head, built from a loaded model and reusing its
weights: Q, K, V, gate and up each their own MatMul (`Projections`). Rotary cos/sin are computed inside the layers block
from position ids with the model's own `inv_freq` (so static scaled RoPE variants come along), once per
block, shared by its layers; a rotary dimension below the head dimension (partial rotary) rotates the first
part only. Phi-3 and Qwen2 reuse these modules with their own checkpoints' layouts.
Usage: `embed, layers, head = llama_blocks(model)`; `layers(first, last)` gives a block module.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from cetrt.families.base import (
    ROPE_LAYER_INPUTS,
    TOKEN_EMBED_INPUTS,
    Family,
    check_static_rope,
    gated_layer_params,
    positions_limit,
    rms_head_params,
    token_embed_params,
)
from cetrt.families.common import (
    FusedProjections,
    Projections,
    ScoringHead,
    attention,
    packed_mask,
    rms_norm,
    split_heads,
)
from cetrt.spec import ModelSpec


class LlamaEmbed(nn.Module):
    def __init__(self, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class LlamaLayer(nn.Module):
    """A pre-norm decoder layer; `projections(layer)` gives its (Q, K, V) and (gate, up) projections from the
    checkpoint's layout (separate Linears in LLaMA, fused ones in Phi-3)."""

    def __init__(self, layer: nn.Module, config, projections: Callable[[nn.Module], tuple[nn.Module, nn.Module]]):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.qkv, self.gate_up = projections(layer)
        self.o_proj = layer.self_attn.o_proj
        self.down_proj = layer.mlp.down_proj
        self.act = _act(layer.mlp)

    def forward(self, hidden, cos, sin, mask):
        x = rms_norm(hidden, self.input_norm, self.eps)
        q, k, v = self.qkv(x)
        q = apply_rotary(split_heads(q, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(split_heads(k, self.num_kv_heads, self.head_dim), cos, sin)
        v = split_heads(v, self.num_kv_heads, self.head_dim)
        hidden = hidden + self.o_proj(attention(q, k, v, mask, self.scale))
        x = rms_norm(hidden, self.post_norm, self.eps)
        gate, up = self.gate_up(x)
        return hidden + self.down_proj(self.act(gate) * up)


def _act(mlp: nn.Module):
    return getattr(mlp, "act_fn", None) or mlp.activation_fn


def separate_projections(layer: nn.Module) -> tuple[Projections, Projections]:
    attn, mlp = layer.self_attn, layer.mlp
    return Projections(attn.q_proj, attn.k_proj, attn.v_proj), Projections(mlp.gate_proj, mlp.up_proj)


def fused_projections(layer: nn.Module) -> tuple[FusedProjections, FusedProjections]:
    """The export's layout before 2026-12-02 (one Q|K|V and one gate|up MatMul): bench/layer_forms_ab.py's baseline."""
    attn, mlp = layer.self_attn, layer.mlp
    return FusedProjections(attn.q_proj, attn.k_proj, attn.v_proj), FusedProjections(mlp.gate_proj, mlp.up_proj)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate-half RoPE; x [B, H, L, D], cos and sin [B, 1, L, R] with R <= D (partial rotary:
    the last D - R dimensions pass through)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    half = rot // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaLayers(nn.Module):
    def __init__(self, layers: list[nn.Module], config, inv_freq: torch.Tensor, attention_scaling: float, projections):
        super().__init__()
        self.layers = nn.ModuleList(LlamaLayer(layer, config, projections) for layer in layers)
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(attention_scaling)

    def forward(self, hidden, position_ids, segment_ids):
        mask = packed_mask(segment_ids)  # once per block, shared by its layers
        freqs = position_ids.unsqueeze(-1).float() * self.inv_freq  # [B, L, D/2], FP32
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        cos = (angles.cos() * self.attention_scaling).to(hidden.dtype)
        sin = (angles.sin() * self.attention_scaling).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, mask)
        return hidden


class LlamaNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def llama_blocks(model, projections=separate_projections):
    """The three block factories of a LLaMA-shaped model: embed module, layers(first, last), head module."""
    inner, config = model.model, model.config
    rotary = inner.rotary_emb

    def layers(first: int, last: int) -> nn.Module:
        return LlamaLayers(list(inner.layers[first:last]), config, rotary.inv_freq, rotary.attention_scaling, projections)

    head = ScoringHead(LlamaNorm(inner.norm), model.lm_head)
    return LlamaEmbed(inner.embed_tokens), layers, head


def rope_spec(config: Any, family: str) -> ModelSpec:
    """The shape of a LLaMA-like config (LLaMA, Phi-3, Qwen2 name the same keys)."""
    check_static_rope(config, family)
    heads = config.num_attention_heads
    return ModelSpec(
        architecture=family,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_positions=positions_limit(config),
        embed_dim=config.hidden_size,
    )


def _preset(hidden: int, layers: int, ffn: int, heads: int) -> ModelSpec:
    """Published LLaMA shapes (Touvron et al. 2023, table 2, and the released configs)."""
    return ModelSpec(architecture="llama", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                     head_dim=hidden // heads, intermediate_size=ffn, vocab_size=32000, max_positions=2048,
                     embed_dim=hidden)


FAMILY = Family(
    name="llama",
    hf_class="LlamaForCausalLM",
    model_types=("llama",),
    embed_inputs=TOKEN_EMBED_INPUTS,
    layer_inputs=ROPE_LAYER_INPUTS,
    spec_from_config=lambda config: rope_spec(config, "llama"),
    layer_params=gated_layer_params,
    embed_params=token_embed_params,
    head_params=rms_head_params,
    block_modules=llama_blocks,
    presets={
        "llama-7b": _preset(4096, 32, 11008, 32),
        "llama-13b": _preset(5120, 40, 13824, 40),
        "llama-30b": _preset(6656, 60, 17920, 52),
        "llama-65b": _preset(8192, 80, 22016, 64),
        # the real model the tests and CPU benchmarks run (its GGUF config: 9 query heads, 3 key/value heads)
        "smollm2-135m": ModelSpec(architecture="llama", hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                                  head_dim=64, intermediate_size=1536, vocab_size=49152, max_positions=8192,
                                  embed_dim=576),
    },
)
