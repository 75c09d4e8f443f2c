"""Which attention kernel a fused layer runs under each `sdpa_kernel` setting, and how far apart their outputs are.

One random decoder layer of a LLaMA shape (bench/attention_ab.py's), attention fused, weights bound, on the first
packed batch of --items items: run once with ONNX Runtime's own choice and once with the memory-efficient kernel
(the one ce-run asks for, `cuda_options`), each under torch.profiler; reports the attention kernels seen (names
with fmha, attn, sdpa or softmax) and the largest absolute difference between the two outputs.
Usage: python bench/attention_kernel_check.py --dataset d.jsonl --shape llama-7b --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_ab import bound, one_layer  # noqa: E402
from random_llama import load_tokenizer_only  # noqa: E402
from run_anatomy import ORT_DEFAULT, _sdpa_kernel  # noqa: E402

from cetrt.backends import get_backend  # noqa: E402
from cetrt.backends.onnxruntime import EFFICIENT_ATTENTION  # noqa: E402
from cetrt.backends.ort_fusion import fuse_attention  # noqa: E402
from cetrt.calib.schedule import _with_hidden  # noqa: E402
from cetrt.spec import Target  # noqa: E402
from cetrt.workload.hellaswag import load_docs  # noqa: E402
from cetrt.workload.packing import ShapePlan, make_batches, pack_docs  # noqa: E402

ATTENTION_WORDS = ("fmha", "attn", "sdpa", "softmax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shape", default="llama-7b")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = load_tokenizer_only()
    rows = pack_docs(tokenizer, load_docs(args.dataset, args.items))
    target, backend = Target.from_name("cuda"), get_backend("onnxruntime")
    result, outputs = {}, {}
    with tempfile.TemporaryDirectory(prefix="kernel-check-") as tmp:
        spec, block, split = one_layer(args.shape, tokenizer, Path(tmp))
        batch = make_batches(rows, ShapePlan(tokens_per_batch=8192), spec.max_positions)[0]
        inputs = _with_hidden(batch, SimpleNamespace(model=spec, dtype="float16"), np.random.default_rng(0))
        fused = fuse_attention(split.graph)[0]
        for name, mask in (("default", ORT_DEFAULT), ("efficient", EFFICIENT_ATTENTION)):
            with _sdpa_kernel(mask):
                session = bound(backend, target, fused, split, Path(tmp) / "layer.onnx")
            feeds = {n: session.upload(n, inputs[n]) for n in block.input_names}
            session.run(feeds)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out = session.run(feeds)
                torch.cuda.synchronize()
            result[name] = sorted({e.name[:70] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                                   and any(w in e.name.lower() for w in ATTENTION_WORDS)})
            outputs[name] = session.to_host(next(iter(out.values()))).astype(np.float32)
            session.close()
    result.update(max_abs_diff=float(np.abs(outputs["default"] - outputs["efficient"]).max()),
                  max_abs=float(np.abs(outputs["default"]).max()), shape=list(batch.shape),
                  command=" ".join(sys.argv), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
