"""Engines of a random-weight LLaMA of a published shape, weights as inputs, written straight to an engines
directory: three engine types exported and built once, and every layer block's weights file drawn at random.

Tracing and exporting every block of a 7B or 30B model takes minutes a block; a random model's blocks differ only
in their weights, so only embed, one decoder layer and the head are exported (cetrt's own block modules and
exporter) and built (cetrt's backend); the layer engine merges N layers as `ce-build` does (cetrt.merging), and
each layer block gets a weights file in the same layout with new random matrices (norm vectors stay ones).
N is `--layers-per-engine`, else calib's choice from the measured per-call cost (as `make engines` gets it), else
1; rounded down to a divisor of the layer count, so every layer block is one engine type.
`--distinct-layers L` writes about L layers' worth of layer weight files (L // N files, at least one) and points
the blocks at them in turn, so a 30B model fits a small disk while every block's bytes are still read from
storage, O_DIRECT, on every pass: the manifest and its model id say so. The manifest is the build stage's own
record, with per-chunk digests, so `ce-run` takes the directory like any build.
`--calib-dataset D` first runs the calibration stage (cetrt.calib.stage.calibrate, no precision check: the
weights are random) on an export of embed, two one-layer blocks and the head, as `ce-calib` does on an export
(storage read with O_DIRECT, engine load and weights bind, compute of the layer block and the head at several
batch sizes, one layer against two merged on this machine), and puts its calib.json beside the engines, tied to
their manifest: `ce-run` takes its schedule, `ce-predict --calib` its rates.
Usage: python bench/random_engines.py --out /tmp/e --shape llama-7b --target cuda [--layers 32] [--distinct-layers 12]
       [--layers-per-engine N] [--calib-dataset .devdata/hellaswag_val.jsonl]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from cetrt.backends import get_backend
from cetrt.backends.base import BuildSettings
from cetrt.export.onnx_export import OPSET, export_block
from cetrt.export.pipeline import block_specs, example_inputs
from cetrt.families import get_family, presets
from cetrt.families.llama import llama_blocks
from cetrt.files import FileRecord
from cetrt.formats.blocks import TOKENIZER_DIR, ExportedBlock, ExportedModel, write_blocks
from cetrt.formats.calib import CALIB_FILE, write_calib
from cetrt.formats.manifest import EngineBlock, EngineType, Manifest, write_manifest
from cetrt.formats.weights import split_block, write_weight_file
from cetrt.merging import merge_layers, merged_weights
from cetrt.spec import Target
from cetrt.storage import DEFAULT_REQUEST_BYTES
from cetrt.workload.shapes import ShapePlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_llama import load_tokenizer_only, materialize


def hf_config(shape: str, layers: int | None, vocab_size: int):
    from transformers import LlamaConfig

    spec = presets()[shape]
    return LlamaConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                       num_hidden_layers=layers or spec.num_layers, num_attention_heads=spec.num_heads,
                       num_key_value_heads=spec.num_kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       vocab_size=vocab_size, tie_word_embeddings=False, dtype="float16")


def random_like(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """New random matrices of the same shapes (vectors, the norms, stay as they are)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(a.shape, generator=generator).mul_(0.02).half().numpy() if a.ndim == 2 else a)
            for name, a in weights.items()}


def layers_per_engine(layers: int, wanted: int) -> int:
    """The largest divisor of the layer count not above `wanted`: every layer block is then one engine type."""
    return max(n for n in range(1, max(1, min(wanted, layers)) + 1) if layers % n == 0)


def calibrate_here(tmp: Path, exported_files: dict, specs: dict, spec, tokenizer, target: str, dataset: str,
                   items: int, model_id: str, model_hash: str):
    """The calibration stage on an export of one block of each kind (the ONNX files as exported, weights inside),
    its record then tied to the engines' manifest (model hash, export digest "random")."""
    from cetrt.calib.stage import CalibOptions, calibrate

    tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    kinds = ("embed", "layers", "layers", "head")  # two layer blocks (one file): calib times one against two merged
    blocks = tuple(ExportedBlock(spec=dataclasses.replace(specs[kind], index=n, first_layer=max(0, n - 1),
                                                          last_layer=n if kind == "layers" else specs[kind].last_layer),
                                 files=tuple(FileRecord.of(tmp, f) for f in exported_files[kind]))
                   for n, kind in enumerate(kinds))
    write_blocks(tmp, ExportedModel(
        model_id=model_id, model_hash=model_hash, model=spec, dtype="float16", opset=OPSET,
        tokenizer_files=tuple(FileRecord.of(tmp, p) for p in sorted((tmp / TOKENIZER_DIR).rglob("*")) if p.is_file()),
        blocks=blocks))
    record = calibrate(CalibOptions(onnx_dir=tmp, target=target, dataset=dataset, precision_items=0,
                                    schedule_items=items, progress=False), announce=print)
    note = ("measured by bench/random_engines.py on an export of this random model's embed, two one-layer blocks "
            "(one file) and head, weights inside, as ce-calib measures an export")
    return dataclasses.replace(record, export_digest="random", inputs={**record.inputs, "note": note})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", default="llama-7b", help="a LLaMA preset: llama-7b, llama-30b, ...")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's)")
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--distinct-layers", type=int, default=0,
                        help="layers' worth of layer weight files to write (0: every block its own)")
    parser.add_argument("--layers-per-engine", type=int, default=None,
                        help="decoder layers per engine (default: calib's choice with --calib-dataset, else 1)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--calib-dataset", default=None, help="also calibrate on this machine (calib.json beside)")
    parser.add_argument("--calib-items", type=int, default=400, help="items the calibration's batches come from")
    args = parser.parse_args()
    start = time.perf_counter()

    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    tokenizer = load_tokenizer_only()  # SmolLM2's (49,152 tokens): it sets the vocabulary
    config = hf_config(args.shape, args.layers, len(tokenizer))
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.float16)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    spec = get_family("llama").spec_from_config(config)
    family = get_family("llama")
    one = block_specs(family, spec.num_layers, 1, spec.hidden_size, "float16")  # what is exported: one layer a block
    target, backend = Target.from_name(args.target), get_backend(args.backend)
    settings = BuildSettings(shape_plan=ShapePlan(max_length=args.max_length))
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    exported, exported_files, calib = {}, {}, None  # kind -> split of the exported block (weights inside split off)
    with tempfile.TemporaryDirectory(prefix="random-engines-") as tmp:
        examples = example_inputs(spec.hidden_size, torch.float16, spec.vocab_size)
        for kind, block in (("embed", one[0]), ("layers", one[1]), ("head", one[-1])):
            sources = {"embed": [model.model.embed_tokens], "layers": [model.model.layers[0]],
                       "head": [model.model.norm, model.lm_head]}[kind]
            for n, module in enumerate(sources):
                materialize(module, torch.Generator().manual_seed(1000 + n))
            embed, layers, head = llama_blocks(model)
            module = {"embed": embed, "head": head}.get(kind) or layers(0, 1)
            exported_files[kind] = export_block(module.eval(), examples, block, Path(tmp) / f"{kind}.onnx")
            exported[kind] = split_block(exported_files[kind][0])
            for module in sources:
                module.to("meta")
        name_hint = f"random-{args.shape}-{spec.num_layers}L"
        if args.calib_dataset:
            calib = calibrate_here(Path(tmp), exported_files, {"embed": one[0], "layers": one[1], "head": one[-1]},
                                   spec, tokenizer, args.target, args.calib_dataset, args.calib_items, name_hint,
                                   "pending")
        wanted = args.layers_per_engine or (calib.schedule.get("layers_per_engine") if calib else None) or 1
        per_engine = layers_per_engine(spec.num_layers, int(wanted))
        specs = block_specs(family, spec.num_layers, per_engine, spec.hidden_size, "float16")
        distinct = len(specs) - 2
        if args.distinct_layers:
            distinct = min(distinct, max(1, args.distinct_layers // per_engine))
        model_id = (name_hint + (f", {per_engine} layers per engine" if per_engine > 1 else "")
                    + (f" ({distinct} distinct layer weight files, each read as its block's own)"
                       if distinct < len(specs) - 2 else ""))
        identity = json.dumps({"shape": args.shape, "layers": spec.num_layers, "files": distinct}
                              | ({"layers_per_engine": per_engine} if per_engine > 1 else {}), sort_keys=True)
        model_hash = hashlib.sha256(identity.encode()).hexdigest()
        if calib is not None:
            calib = dataclasses.replace(calib, model_id=model_id, model_hash=model_hash)
        templates = {}  # kind -> (engine type name, weight specs, build result)
        for kind, block in (("embed", specs[0]), ("layers", specs[1]), ("head", specs[-1])):
            split = merge_layers([exported[kind]] * per_engine) if kind == "layers" else exported[kind]
            name = f"type_{len(templates):02d}"
            graph = Path(tmp) / f"{name}.onnx"
            onnx.save(split.graph, str(graph))
            built = backend.build(graph, out / f"{name}{backend.engine_suffix}",
                                  dataclasses.replace(block, inputs=block.inputs + split.weight_specs), target, settings)
            templates[kind] = (name, split.weight_specs, built)
        blocks, members, written = [], {kind: [] for kind in templates}, {}
        for block in tqdm(specs, desc="weights files", unit="block"):
            kind = block.kind
            name = templates[kind][0]
            if kind == "layers":
                slot = (block.index - 1) % distinct
                path = out / f"layers_{slot:03d}.weights"
            else:
                slot, path = 0, out / f"{kind}.weights"
            if not path.exists():
                weights = exported[kind].weights
                if kind == "layers":
                    weights = merged_weights([random_like(weights, 7 + block.index * per_engine + k)
                                              for k in range(per_engine)])
                index = write_weight_file(path, weights)
                written[kind, slot] = (index, FileRecord.of(out, path, DEFAULT_REQUEST_BYTES))
            index, record = written[kind, slot]
            blocks.append(EngineBlock(spec=block, files=(record,), build_seconds=0.0, engine_type=name, weights=index))
            members[kind].append(block.index)
    engine_types = []
    for kind in ("embed", "layers", "head"):
        name, weight_specs, built = templates[kind]
        engine_types.append(EngineType(name=name, files=tuple(FileRecord.of(out, f, DEFAULT_REQUEST_BYTES)
                                                              for f in built.files),
                                       weight_inputs=weight_specs, blocks=tuple(members[kind]),
                                       build_seconds=built.seconds, details=built.details))
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    if calib is not None:
        write_calib(out, calib)
    write_manifest(out, Manifest(
        model_id=model_id, model_hash=model_hash, model=spec, dtype="float16",
        backend=backend.name, backend_version=backend.version(), target=target,
        tokenizer_files=tuple(FileRecord.of(out, p) for p in sorted((out / TOKENIZER_DIR).rglob("*")) if p.is_file()),
        blocks=tuple(blocks), engine_types=tuple(engine_types),
        build_options={"weights": "inputs", "export_digest": "random", "random_weights": True,
                       "distinct_layer_files": distinct, "layers_per_engine": per_engine,
                       "layers_per_engine_source": "given" if args.layers_per_engine else
                       "calib" if calib is not None and calib.schedule.get("layers_per_engine") else "default"},
        calib_file=FileRecord.of(out, out / CALIB_FILE) if calib is not None else None,
    ))
    print(json.dumps({"out": str(out), "model_id": model_id, "seconds": round(time.perf_counter() - start, 1),
                      "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
                      "calib": str(out / CALIB_FILE) if calib is not None else None}))


if __name__ == "__main__":
    main()
