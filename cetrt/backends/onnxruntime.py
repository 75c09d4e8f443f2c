"""ONNX Runtime backend: the engine is the block's ONNX graph optimized offline for the target's provider.

Build runs ORT's graph optimizer at the extended level (fusions that stay valid across machines of the same
provider) and saves the result; load creates a session from the engine's bytes, read by the caller.
On CPU, tensors between blocks are NumPy arrays.
Usage: `OnnxRuntimeBackend().build(onnx, engine, Target.from_name("cpu"), {})`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cetrt.backends.base import Backend, BuildResult, EngineSource, Session
from cetrt.errors import MissingDependency, UserError
from cetrt.spec import Target


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)", "the onnxruntime backend") from None
    return onnxruntime


def _providers(target: Target) -> list[str]:
    ort = _ort()
    wanted = "CUDAExecutionProvider" if target.device == "cuda" else "CPUExecutionProvider"
    if wanted not in ort.get_available_providers():
        raise UserError(
            f"target {target.name!r} needs ONNX Runtime's {wanted}, but this onnxruntime has only "
            f"{ort.get_available_providers()}; install onnxruntime-gpu or choose --target cpu"
        )
    return [wanted]


def _session_options(options: dict):
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if options.get("threads"):
        so.intra_op_num_threads = int(options["threads"])
    return so


class OnnxRuntimeSession(Session):
    def __init__(self, session):
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    engine_suffix = ".onnx"

    def version(self) -> str:
        return _ort().__version__

    def build(self, onnx_path: Path, engine_path: Path, target: Target, options: dict) -> BuildResult:
        ort = _ort()
        start = time.perf_counter()
        so = _session_options(options)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(engine_path)
        external = Path(str(onnx_path) + ".data").exists()
        data_file = engine_path.with_name(engine_path.name + ".data")
        if external:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_file.name)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(onnx_path), so, providers=_providers(target))
        files = (engine_path, data_file) if external and data_file.exists() else (engine_path,)
        return BuildResult(files=files, seconds=time.perf_counter() - start, details={"optimization": "extended"})

    def load(self, source: EngineSource, target: Target, options: dict) -> Session:
        ort = _ort()
        so = _session_options(options)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        has_data = source.path.with_name(source.path.name + ".data").exists()
        model = source.read_bytes()
        if has_data:  # weights live beside the graph; ORT resolves them relative to the path
            model = str(source.path)
        try:
            session = ort.InferenceSession(model, so, providers=_providers(target))
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
            raise UserError(f"{source.path}: ONNX Runtime cannot load this engine ({str(e)[:200]}); rebuild it with `make engines`") from None
        return OnnxRuntimeSession(session)
