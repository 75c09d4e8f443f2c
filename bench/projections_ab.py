"""One decoder layer with separate Q/K/V and gate/up MatMuls (the export's form since 2026-12-02) against one
fused MatMul each whose output is sliced (the form before), same random FP16 weights bound as inputs, attention
fused for both as the CUDA build fuses it, in one process, on the same packed batches of the dataset.

ONNX Runtime runs the fused form's Slices as a Split kernel that copies the projections' whole output: in the
profiles of 2026-12-02 the largest kernel after the GEMMs (SmolLM2 24-layer block: 1.97 of 14.1 ms; LLaMA-30B
layer at 8,192 tokens: 0.87 of 15.1 ms). Each batch is timed on its second run, as calib times it (bench/
attention_ab.py's timing), over about 16k padded tokens a size; the two forms' outputs on one batch are compared.
Usage: python bench/projections_ab.py --dataset d.jsonl --shapes smollm2-135m llama-7b llama-30b --json out.json
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
import torch

from cetrt.backends import get_backend
from cetrt.backends.ort_fusion import fuse_attention
from cetrt.calib.schedule import _typical_first, _with_hidden
from cetrt.families.llama import fused_projections, separate_projections
from cetrt.spec import HIDDEN_OUT, Target
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import pack_docs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_ab import bound, one_layer, time_session  # noqa: E402
from random_llama import load_tokenizer_only  # noqa: E402

FORMS = {"separate": separate_projections, "fused": fused_projections}


def compare_shape(shape: str, sizes: list[int], rows, tokenizer, backend, target) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="projections-ab-") as tmp:
        layers = {}
        for name, projections in FORMS.items():
            folder = Path(tmp) / name
            folder.mkdir()
            spec, block, split = one_layer(shape, tokenizer, folder, projections=projections)
            graph, _ = fuse_attention(split.graph)
            layers[name] = (block, split, graph, folder / "layer.onnx")
        exported = SimpleNamespace(model=spec, dtype="float16")
        for size in sizes:
            batches = _typical_first(rows, size, exported)
            out[str(size)] = {}
            outputs = {}
            for name, (block, split, graph, path) in layers.items():
                session = bound(backend, target, graph, split, path)
                out[str(size)][name] = time_session(session, block, batches, exported)
                feeds = _with_hidden(batches[0], exported, np.random.default_rng(1))
                outputs[name] = session.to_host(session.run({k: feeds[k] for k in block.input_names})[HIDDEN_OUT])
                session.close()
            row = out[str(size)]
            row["fused_over_separate"] = round(row["fused"]["s_per_padded_token"]
                                               / row["separate"]["s_per_padded_token"], 3)
            a, b = (outputs[n].astype(np.float32) for n in FORMS)
            row["outputs_max_abs_diff"] = float(np.abs(a - b).max())
            row["outputs_max_abs"] = float(np.abs(a).max())
            print(shape, size, json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama-7b", "llama-30b"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = load_tokenizer_only()
    target, backend = Target.from_name(args.target), get_backend("onnxruntime")
    rows = pack_docs(tokenizer, load_docs(args.dataset, args.items))
    shapes = {shape: compare_shape(shape, args.sizes, rows, tokenizer, backend, target) for shape in args.shapes}
    result = {"benchmark": __doc__.splitlines()[0], "shapes": shapes,
              "machine": {"node": platform.node(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "versions": {"onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
              "command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
