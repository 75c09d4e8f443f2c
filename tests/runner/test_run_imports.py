"""What a CPU run imports: ce-run reads engines and scores; onnx (1.3 s to import on the 2-core machine, through
ml_dtypes), torch and transformers belong to export, build and calib, and a run must not pay for them."""

from __future__ import annotations

import subprocess
import sys


def test_a_cpu_run_imports_neither_onnx_nor_torch_nor_transformers(zoo, hellaswag_path):
    engines = zoo.engines("llama")
    code = ("import sys\n"
            "from cetrt.runner.evaluate import RunOptions, evaluate\n"
            f"results = evaluate(RunOptions(engines={str(engines)!r}, dataset={str(hellaswag_path)!r}, limit=4, "
            "progress=False))\n"
            "assert len(results.items) == 4\n"
            "print(sorted(m for m in ('onnx', 'torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
