"""`ce-export` as a user runs it, layer blocks written from one shared trace (the default since 2026-12-05) against
every block traced (CETRT_SHARE_LAYER_GRAPHS=0), alternating, each a process timed from outside into a fresh
directory. The two exports must be the same files byte for byte, or the benchmark fails. Writes JSON with the
machine, versions and command.
Usage: python bench/export_speed.py --model smollm2-135m --dtype float16 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SIDES = {"every_block_traced": "0", "shared": "1"}


def export(model: str, dtype: str, layers_per_block: int, out: Path, share: str) -> float:
    command = [str(BIN / "ce-export"), "--model", model, "--out", str(out), "--dtype", dtype, "--layers-per-block",
               str(layers_per_block)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "CETRT_SHARE_LAYER_GRAPHS": share})
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--layers-per-block", type=int, default=1, help="ce-export's default: 1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for name, share in SIDES.items():
                out = Path(tmp) / name
                shutil.rmtree(out, ignore_errors=True)
                seconds[name].append(round(export(args.model, args.dtype, args.layers_per_block, out, share), 2))
        if not same_files(Path(tmp) / "every_block_traced", Path(tmp) / "shared"):
            sys.exit("the two exports wrote different files")
        blocks = len(list((Path(tmp) / "shared").glob("block_*.onnx")))
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    import onnx
    import torch

    result = {"benchmark": __doc__.split("\n\n")[0].replace("\n", " "), "model": args.model, "dtype": args.dtype,
              "layers_per_block": args.layers_per_block, "blocks": blocks, "identical_files": True,
              "seconds": seconds, "median_s": medians,
              "every_block_over_shared": round(medians["every_block_traced"] / medians["shared"], 2),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
                          "torch": torch.__version__, "onnx": onnx.__version__,
                          "load_average_after": os.getloadavg()},
              "command": " ".join(sys.argv)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_s": medians, "every_block_over_shared": result["every_block_over_shared"]}))


if __name__ == "__main__":
    main()
