"""Does page-locked allocation slow ONNX Runtime CUDA's start? Fresh processes, alternating: each makes the CUDA
context, then creates an ONNX Runtime CUDA session of a small MatMul graph and runs it once (what ce-run's
preparation pays for each engine type), alone or while another thread pins host memory with cudaHostAlloc, as
ce-run's first reads do beside that preparation since 2026-12-04 (the 7B run's preparation took 3.19 s there,
1.94 s the day before). Needs onnxruntime-gpu and cuda-bindings; run on the GPU machine.
Usage: python bench/pinned_contention.py --rounds 3 --pinned-gb 6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, threading, time
import numpy as np
import onnx
from onnx import TensorProto, helper
from cuda.bindings import runtime as rt

pin_gb = float(sys.argv[1])
rt.cudaSetDevice(0)
rt.cudaFree(0)  # the CUDA context, as ce-run's device makes it before anything else
pinned = {}

def pin():
    rt.cudaSetDevice(0)
    start = time.perf_counter()
    chunk = 1536 << 20
    for _ in range(int(pin_gb * (1 << 30) // chunk)):
        error, _address = rt.cudaHostAlloc(chunk, 0)
        assert error == rt.cudaError_t.cudaSuccess, error
    pinned["s"] = time.perf_counter() - start

thread = threading.Thread(target=pin) if pin_gb > 0 else None
start = time.perf_counter()
if thread:
    thread.start()
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, as cetrt's backend does before its sessions
x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 4096])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None, 4096])
w = helper.make_tensor("w", TensorProto.FLOAT16, [4096, 4096], np.zeros((4096, 4096), np.float16).tobytes(), raw=True)
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
made = time.perf_counter() - start
session.run(None, {"x": np.ones((2048, 4096), np.float16)})
first = time.perf_counter() - start
if thread:
    thread.join()
print(json.dumps({"session_s": round(made, 4), "session_and_first_run_s": round(first, 4),
                  "pinning_s": round(pinned.get("s", 0.0), 4), "pinned_gb": pin_gb,
                  "onnxruntime": ort.__version__, "providers": session.get_providers()}))
"""


def child(pinned_gb: float) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(pinned_gb)], capture_output=True, text=True)
    if done.returncode != 0:  # what failed, in the output that comes back from the device
        raise SystemExit(f"child process (pinning {pinned_gb} GB) exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pinned-gb", type=float, default=6.0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    runs: dict[str, list] = {"alone": [], "beside_pinning": []}
    for _ in range(args.rounds):
        runs["alone"].append(child(0.0))
        runs["beside_pinning"].append(child(args.pinned_gb))
    medians = {name: statistics.median(r["session_and_first_run_s"] for r in done) for name, done in runs.items()}
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else None
    out = {"benchmark": __doc__.splitlines()[0], "runs": runs, "median_session_and_first_run_s": medians,
           "beside_over_alone": round(medians["beside_pinning"] / medians["alone"], 3),
           "machine": {"gpu": gpu, "platform": platform.platform(), "python": platform.python_version()},
           "command": " ".join(["python", *sys.argv]), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({"medians": medians, "beside_over_alone": out["beside_over_alone"]}))


if __name__ == "__main__":
    main()
