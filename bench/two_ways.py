"""Benchmark: the design's two ways of streaming engines, measured on the real model's layer blocks (CPU).

A: one engine per block, weights inside (what `make engines` builds): each block is read and a session
   created from its bytes.
B: one graph per block type whose weights are graph inputs, built once; each block's weights are stored as
   one raw file and read straight into the arrays bound to those inputs. No session per block.
For each: build time, bytes stored, load time per block (read + session or read + arrays), run time per block
on a fixed batch, and the max difference between their outputs. Also: whether TensorRT-RTX parses and builds
B's graph (weights as network inputs). A measurement to choose a default by; B is not a product path yet.

Usage: python bench/two_ways.py --onnx artifacts/onnx/smollm2-135m --out bench/results/two_ways_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cpu_vs_harness import machine  # noqa: E402

from cetrt.formats.blocks import read_blocks  # noqa: E402
from cetrt.spec import HIDDEN, HIDDEN_OUT, POSITION_IDS, SEGMENT_IDS  # noqa: E402
from cetrt.storage import ReadStats, read_file  # noqa: E402

FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
RUNS = 4  # per block: the first run (allocations, prepacking) and the steady state of a chunk's later batches


def weight_names(model: onnx.ModelProto) -> list[str]:
    """Every floating-point initializer with a dimension is a per-block weight (norm vectors included);
    scalars and integer constants (axes, shapes) stay in the graph."""
    return [i.name for i in model.graph.initializer if i.data_type in FLOATS and len(i.dims) >= 1]


def timed_runs(session, feeds) -> tuple[np.ndarray, float, float]:
    times, out = [], None
    for _ in range(RUNS):
        t = time.perf_counter()
        out = session.run([HIDDEN_OUT], feeds)[0]
        times.append(time.perf_counter() - t)
    return out, times[0], float(np.median(times[1:]))


def structure(model: onnx.ModelProto) -> list:
    return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]


def build_type_graph(template: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The block's graph with its weight initializers turned into graph inputs of the same name and type."""
    graph = onnx.ModelProto()
    graph.CopyFrom(template)
    keep = [i for i in graph.graph.initializer if i.name not in names]
    for init in [i for i in graph.graph.initializer if i.name in names]:
        graph.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(keep)
    return graph


def write_weights(model: onnx.ModelProto, names: list[str], path: Path) -> dict:
    """All weights of one block in one raw file, each at a 4 KiB-aligned offset; returns the index."""
    index, offset = {}, 0
    with open(path, "wb") as f:
        for init in model.graph.initializer:
            if init.name in names:
                array = numpy_helper.to_array(init)
                f.seek(offset)
                f.write(array.tobytes())
                index[init.name] = (offset, array.dtype.str, list(array.shape))
                offset += -(-array.nbytes // 4096) * 4096
    return index


def read_weights(path: Path, index: dict, stats: ReadStats) -> dict[str, np.ndarray]:
    data = read_file(path, stats)
    return {name: np.frombuffer(data, dtype=np.dtype(dt), count=int(np.prod(shape)), offset=off).reshape(shape)
            for name, (off, dt, shape) in index.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="an export directory (blocks.json)")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "two_ways")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=192)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    exported = read_blocks(args.onnx)
    layers = [b for b in exported.blocks if b.spec.kind == "layers"]
    rng = np.random.default_rng(0)
    dtype = np.float16 if exported.dtype == "float16" else np.float32
    feeds = {
        HIDDEN: rng.standard_normal((args.batch, args.length, exported.model.hidden_size)).astype(dtype),
        POSITION_IDS: np.tile(np.arange(args.length), (args.batch, 1)).astype(np.int64),
        SEGMENT_IDS: np.zeros((args.batch, args.length), dtype=np.int32),
    }
    feeds = {k: v for k, v in feeds.items() if k in layers[0].spec.input_names}
    so = ort.SessionOptions()
    so.log_severity_level = 3

    # A: per-block engines (ORT-optimized graphs with weights inside), as `ce-build` makes them
    start = time.perf_counter()
    engines = []
    for block in layers:
        so_build = ort.SessionOptions()
        so_build.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so_build.optimized_model_filepath = str(args.work / f"a_{block.spec.index:03d}.onnx")
        ort.InferenceSession(str(args.onnx / block.onnx_file.path), so_build, providers=["CPUExecutionProvider"])
        engines.append(Path(so_build.optimized_model_filepath))
    build_a = time.perf_counter() - start
    stats_a, outputs_a, load_a, first_a, run_a = ReadStats(), [], [], [], []
    for path in engines:
        t0 = time.perf_counter()
        session = ort.InferenceSession(read_file(path, stats_a), so, providers=["CPUExecutionProvider"])
        load_a.append(time.perf_counter() - t0)
        out, first, steady = timed_runs(session, feeds)
        outputs_a.append(out), first_a.append(first), run_a.append(steady)

    # B: one graph for the block type, weights as inputs, one raw weights file per block
    start = time.perf_counter()
    template = onnx.load(str(args.onnx / layers[0].onnx_file.path))
    names = weight_names(template)
    indexes = []
    for block in layers:
        model = onnx.load(str(args.onnx / block.onnx_file.path))
        if structure(model) != structure(template) or weight_names(model) != names:
            raise SystemExit(f"{block.spec.name}: not the same graph as {layers[0].spec.name}; use one layer per block")
        indexes.append(write_weights(model, names, args.work / f"b_{block.spec.index:03d}.weights"))
    type_graph = build_type_graph(template, names)
    onnx.save(type_graph, str(args.work / "b_layer_type.onnx"))
    build_b = time.perf_counter() - start
    stats_b, outputs_b, load_b, first_b, run_b = ReadStats(), [], [], [], []
    t0 = time.perf_counter()
    shared = ort.InferenceSession(str(args.work / "b_layer_type.onnx"), so, providers=["CPUExecutionProvider"])
    session_b = time.perf_counter() - t0
    for block, index in zip(layers, indexes):
        t0 = time.perf_counter()
        weights = read_weights(args.work / f"b_{block.spec.index:03d}.weights", index, stats_b)
        load_b.append(time.perf_counter() - t0)
        out, first, steady = timed_runs(shared, {**feeds, **weights})
        outputs_b.append(out), first_b.append(first), run_b.append(steady)

    rtx = rtx_builds(args.work / "b_layer_type.onnx", layers[0].spec, type_graph, names)
    stored_a = sum(p.stat().st_size for p in engines)
    stored_b = (args.work / "b_layer_type.onnx").stat().st_size + sum(
        (args.work / f"b_{b.spec.index:03d}.weights").stat().st_size for b in layers)
    report = {
        "benchmark": "two ways to stream: per-block engines vs one block-type graph with weights as inputs (ORT CPU)",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "model": exported.model_id, "dtype": exported.dtype, "layer_blocks": len(layers),
        "batch": [args.batch, args.length],
        "page_cache": "O_DIRECT" if stats_a.direct else "read through the page cache",
        "a_engines_with_weights": {"build_s": round(build_a, 2), "stored_bytes": stored_a,
                                   "load_s_per_block": round(float(np.mean(load_a)), 4),
                                   "first_run_s_per_block": round(float(np.mean(first_a)), 4),
                                   "run_s_per_block": round(float(np.mean(run_a)), 4)},
        "b_weights_as_inputs": {"build_s": round(build_b, 2), "stored_bytes": stored_b,
                                "session_s_once": round(session_b, 4),
                                "load_s_per_block": round(float(np.mean(load_b)), 4),
                                "first_run_s_per_block": round(float(np.mean(first_b)), 4),
                                "run_s_per_block": round(float(np.mean(run_b)), 4),
                                "tensorrt_rtx_check_build": rtx},
        "max_output_diff": float(max(np.abs(a - b).max() for a, b in zip(outputs_a, outputs_b))),
        "max_output_diff_relative_to_max_output": float(max(np.abs(a - b).max() / np.abs(a).max()
                                                            for a, b in zip(outputs_a, outputs_b))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


def rtx_builds(path: Path, spec, graph: onnx.ModelProto, names: list[str]) -> dict:
    """Does TensorRT-RTX parse and build the weights-as-inputs graph (check mode, no GPU)?"""
    import dataclasses

    from cetrt.backends.base import BuildSettings
    from cetrt.backends.tensorrt import TensorRTBackend
    from cetrt.spec import Target, TensorSpec
    from cetrt.workload.shapes import ShapePlan

    inputs = {i.name: i for i in graph.graph.input}
    weight_specs = tuple(
        TensorSpec(n, "float", tuple(d.dim_value for d in inputs[n].type.tensor_type.shape.dim)) for n in names)
    block = dataclasses.replace(spec, inputs=spec.inputs + weight_specs)
    start = time.perf_counter()
    try:
        result = TensorRTBackend("tensorrt-rtx").build(path, path.with_suffix(".engine"), block, Target.from_name("orin-agx-32gb"),
                                                     BuildSettings(check=True, shape_plan=ShapePlan(max_length=512)))
        return {"ok": True, "build_s": round(time.perf_counter() - start, 2), "engine_bytes": result.files[0].stat().st_size}
    except Exception as e:  # a measurement: record the failure, do not hide it
        return {"ok": False, "error": str(e)[:300]}


if __name__ == "__main__":
    main()
