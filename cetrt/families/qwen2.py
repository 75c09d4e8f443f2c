"""The Qwen2 family (`Qwen2ForCausalLM`): LLaMA's blocks, with biases on Q, K and V.

Each projection keeps its bias (`Projections` runs the checkpoint's own Linears), so the LLaMA modules serve as
they are; the parameter count adds the biases. Where a config turns its sliding window
on, it bounds the positions a packed row may use, as for Phi-3.
Usage: `get_family("qwen2")`.
"""

from __future__ import annotations

import functools

from cetrt.families.base import (
    ROPE_LAYER_INPUTS,
    TOKEN_EMBED_INPUTS,
    Family,
    gated_layer_params,
    rms_head_params,
    token_embed_params,
)
from cetrt.families.llama import llama_blocks, rope_spec
from cetrt.spec import ModelSpec

FAMILY = Family(
    name="qwen2",
    hf_class="Qwen2ForCausalLM",
    model_types=("qwen2",),
    embed_inputs=TOKEN_EMBED_INPUTS,
    layer_inputs=ROPE_LAYER_INPUTS,
    spec_from_config=lambda config: rope_spec(config, "qwen2"),
    layer_params=functools.partial(gated_layer_params, qkv_bias=True),
    embed_params=token_embed_params,
    head_params=rms_head_params,
    block_modules=llama_blocks,
    presets={
        # Qwen2-7B (Yang et al. 2024, table 1, and the released config): 28 query heads over 4 key/value heads
        "qwen2-7b": ModelSpec(architecture="qwen2", hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                              head_dim=128, intermediate_size=18944, vocab_size=152064, max_positions=32768,
                              embed_dim=3584),
    },
)
