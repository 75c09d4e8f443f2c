"""Two costs a GPU run pays outside its steady compute: starting the GPU software from a cold page cache, and
the first run of each batch shape in a session.

1. Start-up: fresh processes, page cache dropped before each cold one, timing `import torch`, torch's CUDA
   context and streams (what ce-run's `of_which_device_setup_s` timed until 2026-12-02), cetrt's device through
   cuda-bindings (what it times now: streams, pool, one upload and read back), and ONNX Runtime's CUDA provider
   made ready (its CUDA/cuDNN libraries loaded, a one-node session created), each cold and then warm.
2. First runs: one random decoder layer of a LLaMA shape (bench/attention_ab.py's), attention fused, weights
   bound, in one fresh session; every distinct batch shape a run of `--items` items at `--tokens-per-batch` makes,
   each run three times: the first run (kernel choice, cuDNN plans, arena growth) against the later ones (what
   calib times); with attention fused (ONNX Runtime's own kernel choice, and its memory-efficient kernel, which
   ce-run now asks for) and unfused (the export's graph).
Usage: python bench/run_anatomy.py --dataset d.jsonl --shape llama-7b --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import drop_page_cache  # noqa: E402

STARTUP = {
    "import_torch": "import torch",
    "torch_cuda_ready": "import torch; s = torch.cuda.Stream(); torch.empty(1, device='cuda'); torch.cuda.synchronize()",
    "cetrt_device_ready": ("import sys, numpy as np\n"
                           "from cetrt.backends.device import device_for\n"
                           "d = device_for('cuda'); assert d.name == 'cuda-bindings', d.name\n"
                           "d.to_host(d.upload(np.ones(4, np.float16)))\n"
                           "assert 'torch' not in sys.modules"),
    "ort_cuda_ready": (
        "import onnxruntime as ort, onnx\n"
        "from onnx import helper, TensorProto\n"
        "ort.preload_dlls()\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',"
        " [helper.make_tensor_value_info('x', TensorProto.FLOAT16, [4])],"
        " [helper.make_tensor_value_info('y', TensorProto.FLOAT16, [4])])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=10)\n"
        "ort.InferenceSession(m.SerializeToString(), providers=['CUDAExecutionProvider'])"
    ),
}


def startup() -> dict:
    out = {}
    for name, code in STARTUP.items():
        out[name] = {}
        for state in ("cold", "warm"):
            dropped = drop_page_cache() if state == "cold" else None
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            out[name][state] = {"s": round(time.perf_counter() - start, 3), "page_cache_dropped": dropped}
        print(name, out[name], flush=True)
    return out


ORT_DEFAULT = 0  # `sdpa_kernel` 0: ONNX Runtime chooses (cuDNN's flash attention for these graphs on the H200)


def first_runs(shape: str, dataset: str, items: int, tokens_per_batch: int, target_name: str = "cuda") -> dict:
    from attention_ab import bound, one_layer
    from random_llama import load_tokenizer_only

    from cetrt.backends import get_backend
    from cetrt.backends.onnxruntime import EFFICIENT_ATTENTION
    from cetrt.backends.ort_fusion import fuse_attention
    from cetrt.spec import Target
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.packing import ShapePlan, make_batches, pack_docs

    tokenizer = load_tokenizer_only()
    rows = pack_docs(tokenizer, load_docs(dataset, items))
    target, backend = Target.from_name(target_name), get_backend("onnxruntime")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="anatomy-") as tmp:
        spec, block, split = one_layer(shape, tokenizer, Path(tmp))
        exported = SimpleNamespace(model=spec, dtype="float16")
        batches = make_batches(rows, ShapePlan(tokens_per_batch=tokens_per_batch), spec.max_positions)
        one_per_shape = list({tuple(b.shape): b for b in batches}.values())
        variants, fused = {}, fuse_attention(split.graph)[0]
        for name, graph, sdpa in (("fused", fused, ORT_DEFAULT), ("fused_efficient_attention", fused, EFFICIENT_ATTENTION),
                                  ("export_unfused", split.graph, None)):
            with _sdpa_kernel(sdpa):
                session = bound(backend, target, graph, split, Path(tmp) / "layer.onnx")
            variants[name] = _time_shapes(session, one_per_shape, block, exported, rng)
            session.close()
    return {"shape": shape, "items": items, "tokens_per_batch": tokens_per_batch, "batches": len(batches),
            "distinct_shapes": len(one_per_shape), "variants": variants}


@contextlib.contextmanager
def _sdpa_kernel(mask: int | None):
    """ce-run's CUDA provider options (`cuda_options`) with `sdpa_kernel` set to `mask` (None: as ce-run sets it),
    for the sessions made inside."""
    import cetrt.backends.onnxruntime as ort_backend

    plain = ort_backend.cuda_options
    if mask is not None:
        ort_backend.cuda_options = lambda: {**plain(), "sdpa_kernel": str(mask)}
    try:
        yield
    finally:
        ort_backend.cuda_options = plain


def _time_shapes(session, one_per_shape, block, exported, rng) -> dict:
    import torch

    from cetrt.calib.schedule import _wait, _with_hidden

    shapes = []
    for batch in one_per_shape:
        inputs = _with_hidden(batch, exported, rng)
        feeds = {name: session.upload(name, inputs[name]) for name in block.input_names}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            _wait(session, session.run(feeds))
            times.append(time.perf_counter() - start)
        shapes.append({"shape": list(batch.shape), "first_s": round(times[0], 5), "second_s": round(times[1], 5),
                       "third_s": round(times[2], 5)})
        print(shapes[-1], flush=True)
    first = sum(s["first_s"] for s in shapes)
    steady = sum(s["third_s"] for s in shapes)
    later = shapes[1:]  # the first shape of a process also pays its one-off CUDA library set-up
    return {"per_shape": shapes, "first_runs_s": round(first, 4), "same_runs_steady_s": round(steady, 4),
            "first_run_extra_s": round(first - steady, 4),
            "first_run_extra_per_later_shape_s": round(sum(s["first_s"] - s["third_s"] for s in later)
                                                       / max(1, len(later)), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shape", default="llama-7b")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--tokens-per-batch", type=int, default=8192)
    parser.add_argument("--skip-startup", action="store_true", help="only the first runs")
    parser.add_argument("--skip-first-runs", action="store_true", help="only the start-up")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    import platform

    import onnxruntime
    import torch

    result = {"benchmark": __doc__.splitlines()[0], "startup": None if args.skip_startup else startup(),
              "first_runs": None if args.skip_first_runs else first_runs(args.shape, args.dataset, args.items,
                                                                        args.tokens_per_batch),
              "machine": {"node": platform.node(), "gpu": torch.cuda.get_device_name(0)},
              "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
              "command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
