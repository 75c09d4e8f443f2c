"""ONNX Runtime backend: the engine is the block's ONNX graph optimized offline for the target's provider.

Build runs ORT's graph optimizer at the extended level (fusions that stay valid across machines of the same
provider) and saves the result; for a GPU it first fuses each layer's attention into ORT's MultiHeadAttention
and each residual add into the norm that reads it (cetrt/backends/ort_fusion.py), which that optimizer does not
do. Load creates a session from the engine's
bytes, read by the caller.
On CPU, tensors between blocks are NumPy arrays.
Usage: `OnnxRuntimeBackend().build(onnx, engine, block, Target.from_name("cpu"), BuildSettings())`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cetrt.backends.base import Backend, BuildResult, BuildSettings, EngineSource, LoadSettings, Session
from cetrt.backends.device import device_for
from cetrt.errors import MissingDependency, UserError
from cetrt.spec import BlockSpec, Target
from cetrt.switches import choice


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)", "the onnxruntime backend") from None
    return onnxruntime


def _rewrites_for_gpu(target: Target) -> bool:
    """The one rule for which builds rewrite attention and norms (cetrt.backends.ort_fusion): those for a GPU."""
    return target.device == "cuda"


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
    if wanted == "CUDAExecutionProvider":
        options = cuda_options()
        device = device_for("cuda")
        if device.shared_stream:  # kernels on the runner's compute stream, in order with its uploads
            options.update(user_compute_stream=str(device.stream_handle), has_user_compute_stream="1")
        return [(wanted, options)]
    return [wanted]


# ONNX Runtime's `sdpa_kernel` bit for its memory-efficient (CUTLASS) attention kernel
# (onnxruntime/contrib_ops/cuda/bert/attention_kernel_options.h)
EFFICIENT_ATTENTION = 2


def cuda_options() -> dict[str, str]:
    """The CUDA provider's options for every session.
    - No TF32: FP32 engines are the exact reference.
    - Each session's arena grows only as requested, or 30+ sessions of a 7B model exhaust 80 GB
      (CETRT_ORT_ARENA=kNextPowerOfTwo: the other strategy, for bench/attention_ab.py --session-study).
    - MultiHeadAttention takes the memory-efficient kernel, not cuDNN's flash attention (ORT's choice for a graph
      with an attention bias): cuDNN builds a plan for every new batch shape, 70-100 ms on each shape's first run
      in a session where the kernel itself takes under 1 ms; the memory-efficient kernel's first run costs under
      1 ms more than its later ones, and its later runs took the same time (7B layer on the H200, 10 shapes:
      bench/results/run_anatomy_first_runs_llama7b.json)."""
    arena = choice("CETRT_ORT_ARENA", ("kSameAsRequested", "kNextPowerOfTwo"), default="kSameAsRequested")
    return {"use_tf32": "0", "arena_extend_strategy": arena, "sdpa_kernel": str(EFFICIENT_ATTENTION)}


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
          "tensor(int32)": np.int32, "tensor(int64)": np.int64}


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
    """Runs with I/O binding over tensors the runner owns (cetrt.backends.device): inputs already on the device
    (the previous block's hidden states, uploaded weights and batch inputs) are bound by address as they are,
    host arrays are uploaded first, and every output is a new tensor from the device's caching pool, bound by
    address, that stays on the device until `to_host`. Where the device shares its stream (cuda-bindings' device,
    by default), ONNX Runtime runs on the device's compute stream and does not synchronise at the end of a run,
    so the host queues block after block without waiting."""

    def __init__(self, session, device):
        super().__init__(session)
        ort = _ort()
        self._device = device
        self._inputs = [(i.name, i.shape, _NUMPY[i.type]) for i in session.get_inputs()]
        self._output_specs = [(o.name, o.shape, _NUMPY[o.type]) for o in session.get_outputs()]
        self._binding = session.io_binding()
        self._bound: dict[str, tuple] = {}  # input name -> (address, shape) bound now
        self._run_options = ort.RunOptions()
        if device.kind == "cuda" and device.shared_stream:  # else ONNX Runtime's own stream, synchronised per run
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Outputs go to buffers the runner owns, not the session's arena: in layer-major order a chunk's
        outputs outlive the block that made them, and per-session arenas would each grow to a chunk.
        The binding persists between runs and an input is bound again only where its address or shape changed:
        a block's weights and a chunk's batch inputs are bound once, not once per run (a binding is only an
        address, so an input at the address and shape already bound is bound as it is)."""
        binding = self._binding
        dims: dict[str, int] = {}
        for name, shape, dtype in self._inputs:
            tensor = self._device.upload(feeds[name])
            where = (tensor.data_ptr(), tuple(tensor.shape))
            if self._bound.get(name) != where:
                binding.bind_input(name, self._device.kind, 0, dtype, list(tensor.shape), tensor.data_ptr())
                self._bound[name] = where
            dims.update({d: n for d, n in zip(shape, tensor.shape) if isinstance(d, str)})
        binding.clear_binding_outputs()
        outputs = {}
        for name, shape, dtype in self._output_specs:
            outputs[name] = self._device.empty([dims[d] if isinstance(d, str) else d for d in shape], dtype)
            binding.bind_output(name, self._device.kind, 0, dtype, list(outputs[name].shape), outputs[name].data_ptr())
        self._session.run_with_iobinding(binding, self._run_options)
        return outputs

    def to_host(self, value: Any) -> np.ndarray:
        return self._device.to_host(value)

    def upload(self, name: str, array: np.ndarray) -> Any:
        return self._device.upload(array)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    engine_suffix = ".onnx"

    def version(self) -> str:
        return _ort().__version__

    def graph_for(self, model, target: Target):
        from cetrt.backends.ort_fusion import fuse_for_gpu  # onnx: build and calib only, not ce-run

        return fuse_for_gpu(model)[0] if _rewrites_for_gpu(target) else model

    def rewrites(self, target: Target) -> str | None:
        from cetrt.backends.ort_fusion import fusion

        return fusion() if _rewrites_for_gpu(target) else None

    def build(self, onnx_path: Path, engine_path: Path, block: BlockSpec, target: Target,
              settings: BuildSettings) -> BuildResult:
        start = time.perf_counter()
        details = {"optimization": "extended"}
        if not _rewrites_for_gpu(target):
            self._optimize(onnx_path, engine_path, target)
        else:  # the fused graph beside the source, where its external weights (if any) resolve
            import onnx

            from cetrt.backends.ort_fusion import fuse_for_gpu

            model, fused = fuse_for_gpu(onnx.load(str(onnx_path), load_external_data=False))
            details.update({f"fused_{what}": count for what, count in fused.items()})
            staged = onnx_path.with_name(f"{onnx_path.stem}.fused-{os.getpid()}.onnx")
            try:
                onnx.save(model, str(staged))
                self._optimize(staged, engine_path, target, data_of=onnx_path)
            finally:
                staged.unlink(missing_ok=True)
        data_file = engine_path.with_name(engine_path.name + ".data")
        files = (engine_path, data_file) if data_file.exists() else (engine_path,)
        return BuildResult(files=files, seconds=time.perf_counter() - start, details=details)

    def _optimize(self, onnx_path: Path, engine_path: Path, target: Target, data_of: Path | None = None) -> None:
        """ORT's extended optimizations for the target's provider, saved as the engine (weights beside it when
        the source keeps them in `<data_of>.data`)."""
        ort = _ort()
        so = _session_options(None)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(engine_path)
        data_file = engine_path.with_name(engine_path.name + ".data")
        data_file.unlink(missing_ok=True)
        if Path(str(data_of or onnx_path) + ".data").exists():
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_file.name)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(onnx_path), so, providers=_providers(target))

    def load(self, source: EngineSource, target: Target, settings: LoadSettings) -> Session:
        ort = _ort()
        so = _session_options(settings.threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        has_data = source.path.with_name(source.path.name + ".data").exists()
        model = source.read_bytes()
        model = model if isinstance(model, bytes) else bytes(model)  # ORT takes a path or bytes
        if has_data:  # weights live beside the graph; ORT resolves them relative to the path
            model = str(source.path)
        try:
            session = ort.InferenceSession(model, so, providers=_providers(target))
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
            raise UserError(f"{source.path}: ONNX Runtime cannot load this engine ({str(e)[:200]}); rebuild it with `make engines`") from None
        if target.device == "cuda" or settings.io_binding:
            return BoundSession(session, device_for(target.device))
        return OnnxRuntimeSession(session)

    def host_buffers(self, target: Target):
        return device_for("cuda").host_buffers() if target.device == "cuda" else None

    def host_buffer_stats(self, target: Target) -> dict | None:
        return device_for("cuda").host_buffer_stats() if target.device == "cuda" else None
