"""Export a random-weight LLaMA of a published shape (7B by default), block by block, never whole in memory.

The model is built on the meta device; each block's parameters are materialized (normal, std 0.02, FP16),
exported with cetrt's own block modules and exporter, and freed. blocks.json and the tokenizer (SmolLM2's,
from the GGUF the default model ships; its 49,152-token vocabulary sets the shape's vocab) are written as the
export stage writes them, so `ce-build` and `ce-run` take the result like any export.
Usage: python bench/random_llama.py --out artifacts/onnx/llama7b-random [--layers 32] [--layers-per-block 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from cetrt.export.onnx_export import OPSET, export_block
from cetrt.export.pipeline import block_specs, example_inputs
from cetrt.families import get_family, spec_from_config
from cetrt.families.llama import llama_blocks
from cetrt.files import FileRecord
from cetrt.formats.blocks import TOKENIZER_DIR, ExportedBlock, ExportedModel, write_blocks

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6)


def materialize(module: torch.nn.Module, generator: torch.Generator) -> None:
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).mul_(0.02).to(param.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=LLAMA_7B["num_hidden_layers"])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stamp", dest="stamp", action="store_false",
                        help="trace every layers block (slow) instead of stamping new random weights into the first")
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    tokenizer = load_tokenizer_only()
    config = LlamaConfig(**{**LLAMA_7B, "num_hidden_layers": args.layers}, vocab_size=len(tokenizer),
                         tie_word_embeddings=False, dtype="float16")
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.float16)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)  # its inv_freq buffer must be real
    spec = spec_from_config(config)
    generator = torch.Generator().manual_seed(args.seed)
    examples = example_inputs(spec.hidden_size, torch.float16, spec.vocab_size)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    blocks = []
    first_layers: ExportedBlock | None = None
    for block in tqdm(block_specs(get_family("llama"), spec.num_layers, args.layers_per_block, spec.hidden_size, "float16"),
                      desc="export (random weights)", unit="block"):
        path = out / f"block_{block.index:03d}.onnx"
        same_shape = first_layers is not None and (block.last_layer - block.first_layer
                                                   == first_layers.spec.last_layer - first_layers.spec.first_layer)
        if block.kind == "layers" and same_shape and args.stamp:
            stamp(out / first_layers.onnx_file.path, path, args.seed + block.index)
            blocks.append(ExportedBlock(spec=block, files=(FileRecord.of(out, path),)))
            continue
        if block.kind == "layers":
            sources = list(model.model.layers[block.first_layer : block.last_layer])
        else:
            sources = [model.model.embed_tokens] if block.kind == "embed" else [model.model.norm, model.lm_head]
        for source in sources:
            materialize(source, generator)
        embed, layers, head = llama_blocks(model)  # after materializing: the block modules take the new tensors
        module = {"embed": embed, "head": head}.get(block.kind) or layers(block.first_layer, block.last_layer)
        files = export_block(module.eval(), examples, block, path)
        blocks.append(ExportedBlock(spec=block, files=tuple(FileRecord.of(out, f) for f in files)))
        if block.kind == "layers" and first_layers is None:
            first_layers = blocks[-1]
        del module
        for source in sources:
            source.to("meta")
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    identity = json.dumps({"shape": LLAMA_7B, "layers": args.layers, "seed": args.seed, "vocab": len(tokenizer)}, sort_keys=True)
    write_blocks(out, ExportedModel(
        model_id=f"random-llama-{args.layers}L-h{spec.hidden_size}", model_hash=hashlib.sha256(identity.encode()).hexdigest(),
        model=spec, dtype="float16", opset=OPSET,
        tokenizer_files=tuple(FileRecord.of(out, p) for p in sorted((out / TOKENIZER_DIR).rglob("*")) if p.is_file()),
        blocks=tuple(blocks),
    ))


def stamp(template: Path, path: Path, seed: int) -> None:
    """The traced graph of an identical layers block, with fresh random matrices (norm vectors stay ones).

    Every layers block of a model traces to the same graph; only the weights differ. For random weights,
    drawing new matrices into a copy is equivalent to tracing again, and takes seconds instead of minutes.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(template))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if len(init.dims) == 2:
            values = (rng.standard_normal(tuple(init.dims), dtype=np.float32) * 0.02).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save_model(model, str(path))


def load_tokenizer_only():
    from transformers import AutoTokenizer

    from cetrt.sources import resolve_source

    source = resolve_source("smollm2-135m")
    return AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)


if __name__ == "__main__":
    main()
