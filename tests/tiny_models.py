"""Tiny random models of each family (LLaMA, OPT, Phi-3, Qwen2) from a config, with a small byte-level BPE tokenizer trained offline.

The tokenizer is trained on HellaSwag text from ../shared (no hub), adds a BOS like LLaMA's and OPT's do,
and is saved with the model so the pipeline loads both from one local directory as it would a real model.
Usage: `path = make_tiny_model(tmp_path, "llama")`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# ../shared does not travel to the GPU machine: there the tests are pointed at a carried copy.
HELLASWAG = Path(os.environ.get("CETRT_HELLASWAG", SHARED / "data" / "hellaswag" / "hellaswag_val.jsonl"))

# One per family, plus OPT's post-norm variant with a narrower embedding (project_in/out).
ARCHS = ("llama", "opt", "opt-postnorm", "phi3", "qwen2")


def make_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    with open(HELLASWAG) as f:
        for _, line in zip(range(1500), f):
            doc = json.loads(line)
            lines.append(doc["activity_label"] + ": " + doc["ctx"])
            lines.extend(" " + e for e in doc["endings"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(arch: str, vocab_size: int):
    from transformers import LlamaConfig, OPTConfig, Phi3Config, Qwen2Config

    if arch == "phi3":  # partial rotary (Phi-4-mini's layout in Phi3ForCausalLM) and a sliding window
        return Phi3Config(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            original_max_position_embeddings=1024, partial_rotary_factor=0.75, sliding_window=512,
            rms_norm_eps=1e-5, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=2,
            tie_word_embeddings=False,
        )
    if arch == "qwen2":  # biases on Q, K and V, and a head tied to the embedding, as the small Qwen2 models
        return Qwen2Config(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
            initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True,
        )
    if arch == "llama-wide":  # weights that outweigh the process's own allocations (tests/runner/test_rss_budget.py)
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=1024, intermediate_size=2048, num_hidden_layers=6,
            num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-5,
            initializer_range=0.02, bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
            initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        )
    post_norm = arch == "opt-postnorm"
    return OPTConfig(
        vocab_size=vocab_size, hidden_size=64, ffn_dim=96, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=1024, do_layer_norm_before=not post_norm, word_embed_proj_dim=32 if post_norm else 64,
        init_std=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=2, activation_function="relu",
    )


def make_tiny_model(directory: Path, arch: str, tokenizer=None, seed: int = 0, config=None) -> Path:
    """Save a random model + tokenizer as a Hugging Face directory (config.json, safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    config = config or tiny_config(arch, len(tokenizer))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # non-trivial norm parameters, so a dropped or misplaced norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_overflow_model(directory: Path, tokenizer=None, scale: float = 2.0**16) -> Path:
    """A tiny LLaMA (one layer) that overflows FP16 in its Q|K|V projection but is the same function in
    exact arithmetic: v_proj times `scale`, o_proj divided by it (attention is linear in V; a power of two, so
    exact). Every weight is then rounded to FP16, so the FP16 and FP32 exports hold identical weights and
    differ only in arithmetic."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.num_hidden_layers = 1
    make_tiny_model(directory, "llama", tokenizer, config=config)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    with torch.no_grad():
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight.mul_(scale)
        attn.o_proj.weight.div_(scale)
        for param in model.parameters():
            param.copy_(param.half().float())
    model.save_pretrained(directory)
    return directory


def export_deep_llama(root: Path, tokenizer, layers: int) -> Path:
    """A tiny LLaMA of `layers` decoder layers exported in FP32, one layer a block: many blocks, for streaming and
    device-split tests. Returns the export directory."""
    from transformers import LlamaConfig

    from cetrt.export.pipeline import ExportOptions, export_model

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = make_tiny_model(root / "model", "llama", tokenizer, config=config)
    export_model(ExportOptions(model=str(model), out_dir=root / "onnx", dtype="float32", layers_per_block=1))
    return root / "onnx"
