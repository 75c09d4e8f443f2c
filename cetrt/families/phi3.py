"""The Phi-3 family (`Phi3ForCausalLM`): LLaMA's blocks over Phi-3's checkpoint layout.

Phi-3 stores Q|K|V as one `qkv_proj` and gate|up as one `gate_up_proj` (gate first); the export splits them into
the separate projections LLaMA's layer takes (views of the checkpoint's rows, no copies). Its rotary embedding is plain RoPE
in the 4k-context variants (Phi-3-mini-4k, Phi-3-medium-4k, the 2024 Orin challenge's model); the 128k
variants' `longrope` changes frequencies with the sequence length and is refused. Phi-3's sliding window
bounds the positions a packed row may use, so every row stays inside it and scores equal full attention.
Usage: `get_family("phi3")`.
"""

from __future__ import annotations

from torch import nn

from cetrt.families.base import (
    ROPE_LAYER_INPUTS,
    TOKEN_EMBED_INPUTS,
    Family,
    gated_layer_params,
    rms_head_params,
    token_embed_params,
)
from cetrt.families.common import Projections
from cetrt.families.llama import llama_blocks, rope_spec
from cetrt.spec import ModelSpec


def checkpoint_projections(layer: nn.Module) -> tuple[Projections, Projections]:
    qkv, gate_up = layer.self_attn.qkv_proj, layer.mlp.gate_up_proj
    q_size = layer.self_attn.o_proj.in_features
    kv_size = (qkv.out_features - q_size) // 2
    return (Projections.from_fused(qkv, [q_size, kv_size, kv_size]),
            Projections.from_fused(gate_up, [gate_up.out_features // 2] * 2))


def phi3_blocks(model):
    return llama_blocks(model, projections=checkpoint_projections)


def _preset(hidden: int, layers: int, ffn: int, heads: int, kv_heads: int) -> ModelSpec:
    """Published Phi-3 4k shapes (Abdin et al. 2024, and the released configs: 32,064 tokens, 4,096 positions)."""
    return ModelSpec(architecture="phi3", hidden_size=hidden, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=ffn, vocab_size=32064,
                     max_positions=4096, embed_dim=hidden)


FAMILY = Family(
    name="phi3",
    hf_class="Phi3ForCausalLM",
    model_types=("phi3",),
    embed_inputs=TOKEN_EMBED_INPUTS,
    layer_inputs=ROPE_LAYER_INPUTS,
    spec_from_config=lambda config: rope_spec(config, "phi3"),
    layer_params=gated_layer_params,
    embed_params=token_embed_params,
    head_params=rms_head_params,
    block_modules=phi3_blocks,
    presets={
        "phi-3-mini": _preset(3072, 32, 8192, 32, 32),  # 3.8B
        "phi-3-medium": _preset(5120, 40, 17920, 40, 10),  # 14B
    },
)
