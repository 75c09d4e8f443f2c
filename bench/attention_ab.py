"""A block of decoder layers of a LLaMA shape (one by default), random FP16 weights bound as inputs, timed as the
export writes it, with its attention fused, and as ORT CUDA builds take it (attention fused and each residual add
fused into its norm: cetrt/backends/ort_fusion.py), in one process, on the same packed batches of the dataset.

What each rewrite buys per batch size, beside the whole-run figures: the block is exported by cetrt's own block
module and exporter; the graphs are loaded as calib loads a layer engine (ONNX Runtime, the target's provider,
weights bound); each batch is timed at its steady rate, as calib times it (calib.schedule._steady_run), over
about 16k padded tokens a size. A block of one layer has one residual add to fuse (the other is its output);
`--layers 6` is SmolLM2's default engine (11 of 12).
With --session-study, only the build's graph, a fresh session per size against one session through every size
(as calib and ce-run use one), with each of ONNX Runtime's two arena growth strategies.
Usage: python bench/attention_ab.py --shape llama-30b --dataset d.jsonl --sizes 2048 4096 8192 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import torch

from cetrt.backends import get_backend
from cetrt.backends.base import EngineSource, LoadSettings, WeightsBound
from cetrt.backends.ort_fusion import fuse_attention, fuse_for_gpu
from cetrt.calib.flop import layer_block_flop
from cetrt.calib.schedule import _steady_run, _typical_first, _with_hidden
from cetrt.export.onnx_export import export_block
from cetrt.export.pipeline import block_specs, example_inputs
from cetrt.families import get_family
from cetrt.families.llama import llama_blocks, separate_projections
from cetrt.formats.weights import split_block
from cetrt.spec import Target
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import pack_docs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_engines import hf_config  # noqa: E402
from random_llama import load_tokenizer_only, materialize  # noqa: E402

TOKENS_PER_SIZE = 16384


def one_layer(shape: str, tokenizer, tmp: Path, projections=separate_projections, layers: int = 1):
    """The export of one block of `layers` random decoder layers of `shape` (one by default), split into graph and
    weights (the same weights for every `projections` form: the generator's seed is fixed)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config(shape, layers, len(tokenizer))
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.float16)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    family = get_family("llama")
    spec = family.spec_from_config(config)
    block = block_specs(family, layers, layers, spec.hidden_size, "float16")[1]
    generator = torch.Generator().manual_seed(0)
    for layer in model.model.layers:
        materialize(layer, generator)
    _, make_block, _ = llama_blocks(model, projections=projections)
    files = export_block(make_block(0, layers).eval(), example_inputs(spec.hidden_size, torch.float16, spec.vocab_size),
                         block, tmp / "layer.onnx")
    return spec, block, split_block(files[0])


def bound(backend, target, graph: onnx.ModelProto, split, path: Path):
    engine = backend.load(EngineSource(path=path, read=lambda: graph.SerializeToString()), target, LoadSettings())
    return WeightsBound(engine, split.weights)


def time_session(session, block, batches, exported) -> dict:
    rng = np.random.default_rng(0)
    seconds, tokens, flop = 0.0, 0, 0.0
    for n, batch in enumerate(batches):
        elapsed = _steady_run(session, SimpleNamespace(spec=block), _with_hidden(batch, exported, rng))
        if n == 0:
            continue  # warm-up
        seconds += elapsed
        tokens += batch.shape[0] * batch.shape[1]
        flop += layer_block_flop(exported.model, block.last_layer - block.first_layer, batch)
        if tokens >= TOKENS_PER_SIZE:
            break
    return {"s_per_padded_token": seconds / tokens, "padded_tokens": tokens, "tflops_useful": flop / seconds / 1e12}


def session_study(backend, target, graph, split, block, path: Path, rows, exported, sizes: list[int]) -> dict:
    """The fused layer over ascending batch sizes three ways: a fresh session per size; one session through
    every size, as calib and ce-run use one (ONNX Runtime's arena grown as requested, the default); and one
    session with the arena grown in powers of two (CETRT_ORT_ARENA)."""
    import os

    batches = {size: _typical_first(rows, size, exported) for size in sizes}
    out = {"fresh_session": {}, "one_session": {}, "one_session_power_of_two": {}}
    for size in sizes:
        session = bound(backend, target, graph, split, path)
        out["fresh_session"][str(size)] = time_session(session, block, batches[size], exported)
        session.close()
    for name, arena in (("one_session", "kSameAsRequested"), ("one_session_power_of_two", "kNextPowerOfTwo")):
        os.environ["CETRT_ORT_ARENA"] = arena
        session = bound(backend, target, graph, split, path)
        out[name] = {str(size): time_session(session, block, batches[size], exported) for size in sizes}
        session.close()
        print(name, json.dumps(out[name]), flush=True)
    os.environ.pop("CETRT_ORT_ARENA", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-30b")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--layers", type=int, default=1, help="decoder layers in the block")
    parser.add_argument("--session-study", action="store_true",
                        help="only the build's graph: a fresh session per size against one session through all sizes")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = load_tokenizer_only()
    target, backend = Target.from_name(args.target), get_backend("onnxruntime")
    rows = pack_docs(tokenizer, load_docs(args.dataset, args.items))
    with tempfile.TemporaryDirectory(prefix="attention-ab-") as tmp:
        spec, block, split = one_layer(args.shape, tokenizer, Path(tmp), layers=args.layers)
        exported = SimpleNamespace(model=spec, dtype="float16")
        attention, _ = fuse_attention(split.graph)
        fused, count = fuse_for_gpu(split.graph)
        graphs = {"export": split.graph, "attention": attention, "attention_norms": fused}
        sizes, study = {}, None
        if args.session_study:
            study = session_study(backend, target, fused, split, block, Path(tmp) / "layer.onnx", rows, exported,
                                  args.sizes)
            graphs = {}
        for size in args.sizes if graphs else []:
            batches = _typical_first(rows, size, exported)
            sizes[str(size)] = {}
            for name, graph in graphs.items():
                session = bound(backend, target, graph, split, Path(tmp) / "layer.onnx")
                sizes[str(size)][name] = time_session(session, block, batches, exported)
                session.close()
            per_token = {name: sizes[str(size)][name]["s_per_padded_token"] for name in graphs}
            sizes[str(size)]["export_over_attention"] = per_token["export"] / per_token["attention"]
            sizes[str(size)]["attention_over_attention_norms"] = per_token["attention"] / per_token["attention_norms"]
            print(size, json.dumps(sizes[str(size)]), flush=True)
    result = {"benchmark": " ".join(__doc__.split("\n\n")[0].split()), "shape": args.shape, "layers": args.layers,
              "fused_nodes": count,
              "sizes": sizes, **({"session_study": study} if study else {}), "machine": {"node": platform.node(), "gpu": torch.cuda.get_device_name(0)
                                          if torch.cuda.is_available() else None},
              "versions": {"onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
              "command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
