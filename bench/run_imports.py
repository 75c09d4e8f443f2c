"""What ce-run's imports cost a run: `ce-run` as it is (onnx imported only by export, build and calib) against the
same run with onnx imported first, as ce-run imported it until 2026-12-02 (through cetrt.formats.weights, and
ml_dtypes beneath onnx).

Both are fresh processes timed from outside on the same engines and items, alternating for --rounds rounds (the
machine's load moves between minutes); the import alone is timed the same way. Writes JSON with the machine,
versions and command.
Usage: python bench/run_imports.py --engines DIR --dataset hellaswag_val.jsonl --limit 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = "import sys\n{first}from cetrt.cli import run_command\nsys.argv[0] = 'ce-run'\nrun_command()\n"
IMPORT = "{first}import cetrt.cli, cetrt.runner.evaluate\n"
WAYS = {"now": "", "with_onnx": "import onnx\n"}


def timed(code: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    runs = {name: {"run_s": [], "import_s": []} for name in WAYS}
    with tempfile.TemporaryDirectory(prefix="run-imports-") as tmp:
        run_args = ["--engines", str(args.engines), "--dataset", args.dataset, "--limit", str(args.limit), "--quiet",
                    "--json", str(Path(tmp) / "results.json")]
        for _ in range(args.rounds):
            for name, first in WAYS.items():
                runs[name]["run_s"].append(round(timed(RUN.format(first=first), run_args), 3))
                runs[name]["import_s"].append(round(timed(IMPORT.format(first=first), []), 3))
    medians = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in runs.items()}
    import onnx
    import onnxruntime

    result = {"benchmark": __doc__.splitlines()[0], "engines": str(args.engines), "limit": args.limit,
              "rounds": runs, "medians_s": medians,
              "run_with_onnx_over_now": round(medians["with_onnx"]["run_s"] / medians["now"]["run_s"], 3),
              "saved_per_run_s": round(medians["with_onnx"]["run_s"] - medians["now"]["run_s"], 3),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count(),
                          "python": sys.version.split()[0], "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__, "load_average_after": os.getloadavg()},
              "command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("medians_s", "run_with_onnx_over_now", "saved_per_run_s")}))


if __name__ == "__main__":
    main()
