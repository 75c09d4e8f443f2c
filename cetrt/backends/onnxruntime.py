"""ONNX Runtime backend: the engine is the block's ONNX graph optimized offline for the target's provider.

Build runs ORT's graph optimizer at the extended level (fusions that stay valid across machines of the same
provider) and saves the result; load creates a session from the engine's bytes, read by the caller.
On CPU, tensors between blocks are NumPy arrays.
Usage: `OnnxRuntimeBackend().build(onnx, engine, block, Target.from_name("cpu"), BuildSettings())`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cetrt.backends.base import Backend, BuildResult, BuildSettings, EngineSource, LoadSettings, Session
from cetrt.errors import MissingDependency, UserError
from cetrt.spec import BlockSpec, Target


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)", "the onnxruntime backend") from None
    return onnxruntime


def _providers(target: Target) -> list:
    ort = _ort()
    wanted = "CUDAExecutionProvider" if target.device == "cuda" else "CPUExecutionProvider"
    if wanted == "CUDAExecutionProvider" and _version(ort.__version__) >= (1, 21):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels torch brings, before the provider loads
    if wanted not in ort.get_available_providers():
        raise UserError(
            f"target {target.name!r} needs ONNX Runtime's {wanted}, but this onnxruntime has only "
            f"{ort.get_available_providers()}; install onnxruntime-gpu or choose --target cpu"
        )
    if wanted == "CUDAExecutionProvider":  # FP32 engines are the exact reference: no TF32 behind their back
        # each session has its own arena: grow it only as requested, or 30+ sessions of a 7B model exhaust 80 GB
        return [(wanted, {"use_tf32": "0", "arena_extend_strategy": "kSameAsRequested"})]
    return [wanted]


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
          "tensor(int64)": np.int64}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


def _session_options(threads: int | None):
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # One arena per session keeps each block's peak intermediates for the whole run: with SmolLM2's 32
    # sessions the process grew 7.7 GB over 100 items with arenas, 0.73 GB without, and ran faster
    # (bench/ort_arena.py, bench/results/ort_arena_smollm2.json).
    so.enable_cpu_mem_arena = False
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


class OnnxRuntimeSession(Session):
    """Plain runs: NumPy in, NumPy out (the CPU path)."""

    def __init__(self, session):
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))

    def close(self) -> None:
        self._session = None


class BoundSession(OnnxRuntimeSession):
    """Runs with I/O binding on `device`: an OrtValue already there (the previous block's hidden states) is bound
    as it is, NumPy inputs are copied in, and every output stays on the device until `to_host`."""

    def __init__(self, session, device: str):
        super().__init__(session)
        self._device = device
        self._output_specs = [(o.name, o.shape, _NUMPY[o.type]) for o in session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Outputs go to buffers the runner owns, not the session's arena: in layer-major order a chunk's
        outputs outlive the block that made them, and per-session arenas would each grow to a chunk."""
        ort = _ort()
        binding = self._session.io_binding()
        dims: dict[str, int] = {}
        for meta in self._session.get_inputs():
            value = feeds[meta.name]
            if not isinstance(value, ort.OrtValue):
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self._device, 0)
            binding.bind_ortvalue_input(meta.name, value)
            dims.update({d: n for d, n in zip(meta.shape, value.shape()) if isinstance(d, str)})
        outputs = {}
        for name, shape, dtype in self._output_specs:
            concrete = [dims[d] if isinstance(d, str) else d for d in shape]
            outputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(concrete, dtype, self._device, 0)
            binding.bind_ortvalue_output(name, outputs[name])
        self._session.run_with_iobinding(binding)
        return outputs

    def to_host(self, value: Any) -> np.ndarray:
        return value.numpy()

    def upload(self, name: str, array: np.ndarray) -> Any:
        return _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, 0)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    engine_suffix = ".onnx"

    def version(self) -> str:
        return _ort().__version__

    def build(self, onnx_path: Path, engine_path: Path, block: BlockSpec, target: Target,
              settings: BuildSettings) -> BuildResult:
        ort = _ort()
        start = time.perf_counter()
        so = _session_options(None)
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

    def load(self, source: EngineSource, target: Target, settings: LoadSettings) -> Session:
        ort = _ort()
        so = _session_options(settings.threads)
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
        if target.device == "cuda" or settings.io_binding:
            return BoundSession(session, target.device)
        return OnnxRuntimeSession(session)
