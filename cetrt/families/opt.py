"""The OPT family (`OPTForCausalLM`): its record, and its blocks for export (token + learned position
embedding, fused decoder layers, scoring head).

OPT specifics kept exact: learned positions are looked up at position id + 2 (the offset Hugging Face's
OPTLearnedPositionalEmbedding adds), `project_in`/`project_out` when word_embed_proj_dim differs from
hidden_size, post- or pre-LayerNorm (`do_layer_norm_before`), biases everywhere, ReLU (or the configured) MLP.
Usage: `embed, layers, head = opt_blocks(model)`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from cetrt.families.base import Family
from cetrt.families.common import Projections, ScoringHead, attention, layer_norm, packed_mask, split_heads
from cetrt.spec import HIDDEN, INPUT_IDS, POSITION_IDS, SEGMENT_IDS, ModelSpec

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
        self.head_dim = config.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.pre_norm = config.do_layer_norm_before
        self.qkv = Projections(attn.q_proj, attn.k_proj, attn.v_proj)
        self.out_proj = attn.out_proj
        self.attn_norm = layer.self_attn_layer_norm
        self.fc1, self.fc2 = layer.fc1, layer.fc2
        self.mlp_norm = layer.final_layer_norm
        self.act = ACT2FN[config.activation_function]

    def forward(self, hidden, mask):
        x = layer_norm(hidden, self.attn_norm) if self.pre_norm else hidden
        q, k, v = (split_heads(t, self.num_heads, self.head_dim) for t in self.qkv(x))
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

    def forward(self, hidden, segment_ids):
        mask = packed_mask(segment_ids)  # once per block, shared by its layers
        for layer in self.layers:
            hidden = layer(hidden, mask)
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


def opt_spec(config) -> ModelSpec:
    heads = config.num_attention_heads
    return ModelSpec(
        architecture="opt",
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=config.hidden_size // heads,
        intermediate_size=config.ffn_dim,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        embed_dim=config.word_embed_proj_dim,
    )


def opt_layer_params(spec: ModelSpec) -> int:
    """Q, K, V, out and the two MLP matrices with their biases, and two LayerNorms (weight and bias)."""
    h, f = spec.hidden_size, spec.intermediate_size
    return (h + 1) * 3 * h + (h + 1) * h + 2 * (h + 1) * f - f + h + 4 * h


def _projection(spec: ModelSpec) -> int:
    """project_in / project_out, where the word embeddings are narrower than the hidden state."""
    return spec.embed_dim * spec.hidden_size if spec.embed_dim != spec.hidden_size else 0


def opt_embed_params(spec: ModelSpec) -> int:
    """Word embeddings, learned positions (two offset rows), and the projection in."""
    return spec.vocab_size * spec.embed_dim + (spec.max_positions + POSITION_OFFSET) * spec.hidden_size + _projection(spec)


def opt_head_params(spec: ModelSpec) -> int:
    """The final LayerNorm (weight and bias), the projection out, an untied LM head."""
    return 2 * spec.hidden_size + _projection(spec) + spec.vocab_size * spec.embed_dim


def _preset(hidden: int, layers: int, ffn: int, heads: int) -> ModelSpec:
    """Published OPT shapes (Zhang et al. 2022, table 1, and the released configs)."""
    return ModelSpec(architecture="opt", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                     head_dim=hidden // heads, intermediate_size=ffn, vocab_size=50272, max_positions=2048,
                     embed_dim=hidden)


FAMILY = Family(
    name="opt",
    hf_class="OPTForCausalLM",
    model_types=("opt",),
    embed_inputs=(INPUT_IDS, POSITION_IDS),
    layer_inputs=(HIDDEN, SEGMENT_IDS),
    spec_from_config=opt_spec,
    layer_params=opt_layer_params,
    embed_params=opt_embed_params,
    head_params=opt_head_params,
    block_modules=opt_blocks,
    presets={
        "opt-6.7b": _preset(4096, 32, 16384, 32),
        "opt-13b": _preset(5120, 40, 20480, 40),
        "opt-30b": _preset(7168, 48, 28672, 56),
        "opt-66b": _preset(9216, 64, 36864, 72),
    },
)
