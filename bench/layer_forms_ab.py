"""One decoder layer in the export's form against an earlier form, same random FP16 weights bound as inputs,
attention fused for both as the CUDA build fuses it, in one process, on the same packed batches of the dataset.

The forms: separate Q/K/V and gate/up MatMuls (the export's form since 2026-12-02) against one fused MatMul each
whose output is sliced. ONNX Runtime ran the fused form's Slices as a Split kernel copying the
projections' whole output (LLaMA-30B layer at 8,192 tokens: 0.87 of 15.1 ms in the 2026-12-02 profile).
(A second comparison, RoPE's halves swapped by one reversing Slice against a Split and a Concat, is in git
history, commit 6dd37c5 `--compare rotary`: layer_forms_rotary_h200.json; the export kept rotate-half, see the
README.)
Each batch is timed at its steady rate, as calib times it (bench/attention_ab.py's timing), over about 16k padded
tokens a size; the two forms' outputs on one batch are compared, and the ops of each form's graph after ONNX
Runtime's optimizer on the target's provider are counted (what the build's engine holds).
Usage: python bench/layer_forms_ab.py --dataset d.jsonl --shapes smollm2-135m llama-7b llama-30b --json out.json
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

# the export's form first, then the baseline, each as one_layer's keyword arguments
FORMS = {"separate": {"projections": separate_projections}, "fused": {"projections": fused_projections}}


def optimized_ops(graph, target) -> dict:
    """How many nodes of each op type the graph holds after ONNX Runtime's optimizer on the target's provider."""
    import collections

    import onnx
    import onnxruntime as ort

    from cetrt.backends.onnxruntime import _providers

    with tempfile.TemporaryDirectory(prefix="layer-forms-ops-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(graph.SerializeToString(), options, providers=_providers(target))
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return dict(collections.Counter(node.op_type for node in optimized.graph.node).most_common())


def compare_shape(shape: str, forms: dict, sizes: list[int], rows, tokenizer, backend, target) -> dict:
    out = {"optimized_ops": {}}
    with tempfile.TemporaryDirectory(prefix="layer-forms-ab-") as tmp:
        layers = {}
        for name, form in forms.items():
            folder = Path(tmp) / name
            folder.mkdir()
            spec, block, split = one_layer(shape, tokenizer, folder, **form)
            graph, _ = fuse_attention(split.graph)
            layers[name] = (block, split, graph, folder / "layer.onnx")
            out["optimized_ops"][name] = optimized_ops(graph, target)
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
            new, baseline = forms
            row[f"{baseline}_over_{new}"] = round(row[baseline]["s_per_padded_token"]
                                                  / row[new]["s_per_padded_token"], 3)
            a, b = (outputs[n].astype(np.float32) for n in forms)
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
    shapes = {shape: compare_shape(shape, FORMS, args.sizes, rows, tokenizer, backend, target) for shape in args.shapes}
    result = {"benchmark": __doc__.splitlines()[0], "forms": list(FORMS), "shapes": shapes,
              "machine": {"node": platform.node(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "versions": {"onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
              "command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
