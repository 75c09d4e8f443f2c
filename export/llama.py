"""LLaMA blocks for export: embedding, a run of fused decoder layers, and the scoring head.

Built from a loaded `LlamaForCausalLM`, reusing its weights: Q, K and V become one MatMul, gate and up another.
Rotary cos/sin are computed inside the layers block from position ids with the model's own `inv_freq` (so
scaled RoPE variants come along), once per block, shared by its layers.
Usage: `embed, layers, head = llama_blocks(model)`; `layers(first, last)` gives a block module.
"""

from __future__ import annotations

import torch
from torch import nn

from cetrt.export.common import ScoringHead, attention, fuse_linears, rms_norm, split_heads


class LlamaEmbed(nn.Module):
    def __init__(self, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class FusedLlamaLayer(nn.Module):
    def __init__(self, layer: nn.Module, config):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.intermediate_size = config.intermediate_size
        self.scale = self.head_dim**-0.5
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.qkv = fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj = attn.o_proj
        self.gate_up = fuse_linears(mlp.gate_proj, mlp.up_proj)
        self.down_proj = mlp.down_proj
        self.act = mlp.act_fn

    def forward(self, hidden, cos, sin, mask):
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        x = rms_norm(hidden, self.input_norm, self.eps)
        qkv = self.qkv(x)  # slices, not Split: onnx has no opset 18 -> 17 adapter for Split
        q, k, v = qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]
        q = apply_rotary(split_heads(q, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(split_heads(k, self.num_kv_heads, self.head_dim), cos, sin)
        v = split_heads(v, self.num_kv_heads, self.head_dim)
        hidden = hidden + self.o_proj(attention(q, k, v, mask, self.scale))
        x = rms_norm(hidden, self.post_norm, self.eps)
        gate_up = self.gate_up(x)
        gate, up = gate_up[..., : self.intermediate_size], gate_up[..., self.intermediate_size :]
        return hidden + self.down_proj(self.act(gate) * up)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate-half RoPE; x [B, H, L, D], cos and sin [B, 1, L, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaLayers(nn.Module):
    def __init__(self, layers: list[nn.Module], config, inv_freq: torch.Tensor, attention_scaling: float):
        super().__init__()
        self.layers = nn.ModuleList(FusedLlamaLayer(layer, config) for layer in layers)
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(attention_scaling)

    def forward(self, hidden, position_ids, attention_mask):
        freqs = position_ids.unsqueeze(-1).float() * self.inv_freq  # [B, L, D/2], FP32
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        cos = (angles.cos() * self.attention_scaling).to(hidden.dtype)
        sin = (angles.sin() * self.attention_scaling).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, attention_mask)
        return hidden


class LlamaNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def llama_blocks(model):
    """The three block factories of a LlamaForCausalLM: embed module, layers(first, last), head module."""
    inner, config = model.model, model.config
    rotary = inner.rotary_emb

    def layers(first: int, last: int) -> nn.Module:
        return LlamaLayers(list(inner.layers[first:last]), config, rotary.inv_freq, rotary.attention_scaling)

    head = ScoringHead(LlamaNorm(inner.norm), model.lm_head)
    return LlamaEmbed(inner.embed_tokens), layers, head
