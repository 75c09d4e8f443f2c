"""OPT blocks for export: token + learned position embedding, fused decoder layers, scoring head.

OPT specifics kept exact: learned positions are looked up at position id + 2 (the offset Hugging Face's
OPTLearnedPositionalEmbedding adds), `project_in`/`project_out` when word_embed_proj_dim differs from
hidden_size, post- or pre-LayerNorm (`do_layer_norm_before`), biases everywhere, ReLU (or the configured) MLP.
Usage: `embed, layers, head = opt_blocks(model)`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from cetrt.export.common import ScoringHead, attention, fuse_linears, layer_norm, split_heads

POSITION_OFFSET = 2


class OptEmbed(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions
        self.project_in = decoder.project_in

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_tokens(input_ids)
        if self.project_in is not None:
            tokens = self.project_in(tokens)
        positions = nn.functional.embedding(position_ids + POSITION_OFFSET, self.embed_positions.weight)
        return tokens + positions


class FusedOptLayer(nn.Module):
    def __init__(self, layer: nn.Module, config):
        super().__init__()
        attn = layer.self_attn
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.head_dim = config.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.pre_norm = config.do_layer_norm_before
        self.qkv = fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        self.out_proj = attn.out_proj
        self.attn_norm = layer.self_attn_layer_norm
        self.fc1, self.fc2 = layer.fc1, layer.fc2
        self.mlp_norm = layer.final_layer_norm
        self.act = ACT2FN[config.activation_function]

    def forward(self, hidden, mask):
        x = layer_norm(hidden, self.attn_norm) if self.pre_norm else hidden
        qkv, h = self.qkv(x), self.hidden_size  # slices, not Split: no opset 18 -> 17 adapter for Split
        q, k, v = (split_heads(t, self.num_heads, self.head_dim) for t in (qkv[..., :h], qkv[..., h : 2 * h], qkv[..., 2 * h :]))
        hidden = hidden + self.out_proj(attention(q, k, v, mask, self.scale))
        if not self.pre_norm:
            hidden = layer_norm(hidden, self.attn_norm)
        x = layer_norm(hidden, self.mlp_norm) if self.pre_norm else hidden
        hidden = hidden + self.fc2(self.act(self.fc1(x)))
        if not self.pre_norm:
            hidden = layer_norm(hidden, self.mlp_norm)
        return hidden


class OptLayers(nn.Module):
    def __init__(self, layers: list[nn.Module], config):
        super().__init__()
        self.layers = nn.ModuleList(FusedOptLayer(layer, config) for layer in layers)

    def forward(self, hidden, attention_mask):
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        return hidden


class OptFinal(nn.Module):
    """What OPT applies after the last layer: the final LayerNorm (pre-norm models) and project_out."""

    def __init__(self, decoder):
        super().__init__()
        self.norm = decoder.final_layer_norm
        self.project_out = decoder.project_out

    def forward(self, x):
        if self.norm is not None:
            x = layer_norm(x, self.norm)
        if self.project_out is not None:
            x = self.project_out(x)
        return x


def opt_blocks(model):
    """The three block factories of an OPTForCausalLM: embed module, layers(first, last), head module."""
    decoder, config = model.model.decoder, model.config

    def layers(first: int, last: int) -> nn.Module:
        return OptLayers(list(decoder.layers[first:last]), config)

    return OptEmbed(decoder), layers, ScoringHead(OptFinal(decoder), model.lm_head)
