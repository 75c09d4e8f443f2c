"""The CUDA path of the ONNX Runtime backend: I/O binding keeps tensors on the device between blocks.

On CPU, the same binding code runs with device "cpu" (CI has no GPU); on a GPU machine (`pytest -m gpu`),
engines built for the `cuda` target run on ONNX Runtime's CUDA provider and must score like the CPU engines.
"""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.runner.evaluate import RunOptions, evaluate


def _scores(results):
    return np.array([item.scores for item in results.items])


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_io_binding_path_scores_like_the_plain_path(zoo, hellaswag_path, monkeypatch, arch):
    import onnxruntime

    runs = {"bound": 0, "plain": 0}

    def counting(method, key):
        def run(self, *args, **kwargs):
            runs[key] += 1
            return method(self, *args, **kwargs)
        return run

    session = onnxruntime.InferenceSession
    monkeypatch.setattr(session, "run_with_iobinding", counting(session.run_with_iobinding, "bound"))
    monkeypatch.setattr(session, "run", counting(session.run, "plain"))
    plain = evaluate(RunOptions(engines=zoo.engines(arch), dataset=str(hellaswag_path), limit=10, progress=False))
    assert runs["plain"] > 0 and runs["bound"] == 0
    runs["plain"] = 0
    bound = evaluate(RunOptions(engines=zoo.engines(arch), dataset=str(hellaswag_path), limit=10, progress=False,
                                io_binding=True))
    assert runs["bound"] == runs["plain"] + runs["bound"] > 0  # every block ran through the binding
    assert np.array_equal(_scores(plain), _scores(bound))
    assert [i.greedy for i in plain.items] == [i.greedy for i in bound.items]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-3), ("float16", 0.1)])
def test_cuda_engines_score_like_cpu_engines(zoo, hellaswag_path, tmp_path, dtype, tolerance):
    engines = tmp_path / "cuda"
    build_engines(BuildOptions(onnx_dir=zoo.onnx("llama", dtype), out_dir=engines, target="cuda"))
    cuda = evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=12, progress=False))
    cpu = evaluate(RunOptions(engines=zoo.engines("llama"), dataset=str(hellaswag_path), limit=12, progress=False))
    assert np.abs(_scores(cuda) - _scores(cpu)).max() <= tolerance
