"""The LLaMA family (`LlamaForCausalLM`): its record, and its blocks for export.

Blocks: embedding, a run of decoder layers, the scoring head, built from a loaded model and reusing its
weights: Q, K, V, gate and up each their own MatMul (`Projections`). Rotary cos/sin are computed inside the layers block
from position ids with the model's own `inv_freq` (so static scaled RoPE variants come along), once per
block, shared by its layers; a rotary dimension below the head dimension (partial rotary) rotates the first
part only. RoPE is applied to Q and K in their [B, L, heads * D] layout, before the heads are split off, with
the halves swapped by one reversing Slice (`rotate_by_flip`). Phi-3 and Qwen2 reuse these modules with their own checkpoints' layouts.
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
    checkpoint's layout (separate Linears in LLaMA, fused ones in Phi-3); `rotary` applies RoPE (`rotate_by_flip`)."""

    def __init__(self, layer: nn.Module, config, projections: Callable[[nn.Module], tuple[nn.Module, nn.Module]],
                 rotary: Callable):
        super().__init__()
        self.rotary = rotary
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
        q = split_heads(self.rotary(q, cos, sin, self.num_heads), self.num_heads, self.head_dim)
        k = split_heads(self.rotary(k, cos, sin, self.num_kv_heads), self.num_kv_heads, self.head_dim)
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


def rotate_by_flip(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half RoPE on x [B, L, heads * D], with cos and signed_sin [B, L, 1, R], R <= D (partial
    rotary: the last D - R dimensions pass through). signed_sin is sin with its first half negated, so that
    rotate_half(x) * sin is the halves of x swapped, times signed_sin: the same products, and one reversing Slice
    in the graph where rotate-half takes a Split, a Neg and a Concat (ONNX Runtime runs each as a kernel)."""
    b, l, _ = x.shape
    per_head = x.view(b, l, heads, -1)
    rot = cos.shape[-1]
    if rot < per_head.shape[-1]:
        rotated = rotate_by_flip(per_head[..., :rot].reshape(b, l, heads * rot), cos, signed_sin, heads)
        return torch.cat((rotated.view(b, l, heads, rot), per_head[..., rot:]), dim=-1).view(b, l, -1)
    swapped = per_head.view(b, l, heads, 2, rot // 2).flip(-2).view(b, l, heads, rot)
    return (per_head * cos + swapped * signed_sin).view(b, l, -1)


def rotate_by_halves(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, heads: int) -> torch.Tensor:
    """`rotate_by_flip` with the halves swapped by slicing and concatenating, as rotate-half writes it (the export's
    form before 2026-12-03, less its Neg): bench/rotary_ab.py's baseline. Full rotary only."""
    b, l, _ = x.shape
    per_head = x.view(b, l, heads, -1)
    half = per_head.shape[-1] // 2
    swapped = torch.cat((per_head[..., half:], per_head[..., :half]), dim=-1)
    return (per_head * cos + swapped * signed_sin).view(b, l, -1)


class LlamaLayers(nn.Module):
    def __init__(self, layers: list[nn.Module], config, inv_freq: torch.Tensor, attention_scaling: float, projections,
                 rotary):
        super().__init__()
        self.layers = nn.ModuleList(LlamaLayer(layer, config, projections, rotary) for layer in layers)
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(attention_scaling)

    def forward(self, hidden, position_ids, segment_ids):
        mask = packed_mask(segment_ids)  # once per block, shared by its layers
        freqs = position_ids.unsqueeze(-1).unsqueeze(-2).float() * self.inv_freq  # [B, L, 1, R/2], FP32
        cos = (freqs.cos() * self.attention_scaling).to(hidden.dtype)
        sin = (freqs.sin() * self.attention_scaling).to(hidden.dtype)
        cos, signed_sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        for layer in self.layers:
            hidden = layer(hidden, cos, signed_sin, mask)
        return hidden


class LlamaNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def llama_blocks(model, projections=separate_projections, rotary=rotate_by_flip):
    """The three block factories of a LLaMA-shaped model: embed module, layers(first, last), head module."""
    inner, config = model.model, model.config
    rotary_emb = inner.rotary_emb

    def layers(first: int, last: int) -> nn.Module:
        return LlamaLayers(list(inner.layers[first:last]), config, rotary_emb.inv_freq, rotary_emb.attention_scaling,
                           projections, rotary)

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
