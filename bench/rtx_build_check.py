"""Benchmark: every block of the real model parsed and built by TensorRT-RTX on this (CPU-only) machine.

Exports the model in FP16 if its export is missing, builds every block with `--backend tensorrt-rtx --check`
for the Orin target (TensorRT-RTX has no 8.7: it builds for its stand-in, 8.6), and writes per block: build
seconds, ONNX bytes, engine bytes, layers after fusion. Not a run: these engines are not executed here.

Usage: python bench/rtx_build_check.py --out bench/results/rtx_build_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cpu_vs_harness import machine  # noqa: E402


def kernels_per_profile(engines: Path, manifest) -> dict:
    """Layer types of the first layers block's engine, per optimization profile (names end in _myl<profile>_<n>)."""
    import collections
    import re

    block = next(b for b in manifest.blocks if b.spec.kind == "layers")
    layers = json.loads((engines / block.details["layer_report"]).read_text())["layers"]
    profiles = {m.group(1) for l in layers if (m := re.search(r"_myl(\d+)_\d+$", l["name"]))}
    counts = collections.Counter(l["type"] for l in layers)
    return {"block": block.spec.name, "profiles": len(profiles),
            "per_profile": {t: n / max(1, len(profiles)) for t, n in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--target", default="orin-agx-32gb")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import tensorrt_rtx

    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.export.pipeline import ExportOptions, export_model
    from cetrt.formats.blocks import read_blocks

    onnx_dir = args.work / "onnx" / f"{args.model}-float16"
    if not (onnx_dir / "blocks.json").is_file():
        export_model(ExportOptions(model=args.model, out_dir=onnx_dir, dtype="float16"))
    exported = read_blocks(onnx_dir)
    start = time.perf_counter()
    manifest = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=args.work / "rtx-check" / args.model,
                                          backend="tensorrt-rtx", target=args.target, check=True, weights="inside"))
    total = time.perf_counter() - start
    blocks = [{
        "block": b.spec.name,
        "build_s": round(b.build_seconds, 3),
        "onnx_bytes": sum(f.bytes for f in e.files),
        "engine_bytes": b.files[0].bytes,
        "layers_after_fusion": b.details["num_layers"],
    } for b, e in zip(manifest.blocks, exported.blocks)]
    report = {
        "benchmark": "TensorRT-RTX parse + build of every block (check mode, no GPU), FP16 engines",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {"tensorrt_rtx": tensorrt_rtx.__version__, "python": platform.python_version()},
        "model": args.model, "target": args.target,
        "built_for_compute_capability": manifest.blocks[0].details["compute_capability"],
        "profiles": manifest.blocks[0].details["profiles"],
        "total_build_s": round(total, 2),
        "total_engine_bytes": sum(b["engine_bytes"] for b in blocks),
        "total_onnx_bytes": sum(b["onnx_bytes"] for b in blocks),
        "first_layers_block_kernels_per_profile": kernels_per_profile(args.work / "rtx-check" / args.model, manifest),
        "blocks": blocks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("blocks", "profiles")}, indent=2))


if __name__ == "__main__":
    main()
