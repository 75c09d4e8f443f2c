"""TensorRT backends: `tensorrt` (full TensorRT 10.3 .. 11.x, JetPack 6 on the Orin) and `tensorrt-rtx`.

One builder path for both, written to the API they share (STYLE: strongly typed networks from the ONNX types,
no precision flags; named I/O). Where they differ, `Features.of` decides from the flavor and version, never a
try/except. Per block: parse, one optimization profile per length range of the `ShapePlan`, workspace limit
from the target, a timing cache shared by every block of a build (full TensorRT; a no-op in TensorRT-RTX),
build, and a layer report (engine inspector JSON when the engine can be loaded here, else the builder's
detailed verbose log) written beside the engine as `block_NNN.layers.json`.
`check` mode parses and builds for the target without a matching GPU (CI: tensorrt-rtx on a CPU machine).
Usage: `get_backend("tensorrt-rtx").build(onnx, engine, block, target, BuildSettings(check=True, shape_plan=plan))`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Callable

from cetrt.backends.base import Backend, BuildResult, BuildSettings, EngineSource, LoadSettings, Session
from cetrt.backends.tensorrt_features import Features, import_trt
from cetrt.backends.tensorrt_timing_cache import TIMING_CACHE, attach_timing_cache, save_timing_cache
from cetrt.errors import UserError
from cetrt.gpu import current_gpu
from cetrt.spec import BlockSpec, Target

# TensorRT-RTX builds for these; it has no 8.7 (Orin) or 9.0 (Hopper): check mode builds those for 8.6.
RTX_COMPUTE_CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120"}
RTX_STAND_IN = "8.6"
LAYERS_MESSAGE = "Layers:"  # the detailed verbose message that lists the built engine's layers
log = logging.getLogger("cetrt.tensorrt")


def capturing_logger(trt, severity, keep: Callable[[str], bool] = lambda message: False):
    """A TensorRT logger that keeps messages at `severity` or worse (and those `keep` wants), so failures quote the
    builder; warnings and errors also go to Python logging. `min_severity` does nothing on an ILogger subclass
    (TensorRT calls `log` for every message): the filter is here."""
    levels = list(trt.ILogger.Severity.__members__.values())  # most severe first: INTERNAL_ERROR .. VERBOSE
    kept = set(levels[: levels.index(severity) + 1])
    shown = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR, trt.ILogger.Severity.ERROR: logging.ERROR,
             trt.ILogger.Severity.WARNING: logging.WARNING}

    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[object, str]] = []

        def log(self, level, message):
            if level in kept or keep(message):
                self.messages.append((level, message))
            if level in shown:
                log.log(shown[level], "%s", message)

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)]

    return Capture()


_LAYER_LINE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]+)", re.M)


def layers_from_log(messages: list[str]) -> list[dict]:
    """The built engine's layers from the detailed verbose build log (its `Layers:` message)."""
    for message in reversed(messages):
        if message.startswith(LAYERS_MESSAGE):
            return [{"name": m["name"], "type": m["type"]} for m in _LAYER_LINE.finditer(message)]
    return []


def layers_from_inspector(trt, engine) -> list[dict]:
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return [{"name": layer.get("Name", str(layer)) if isinstance(layer, dict) else str(layer),
             "type": layer.get("LayerType", "") if isinstance(layer, dict) else ""} for layer in info.get("Layers", [])]


class TensorRTBackend(Backend):
    engine_suffix = ".engine"
    fixed_shapes = True

    def __init__(self, flavor: str, module=None, devices: Callable[[], object] | None = None,
                 cuda_graphs: bool = False):
        """`module` is the TensorRT module (default: imported by flavor); `devices` makes the device every session
        of this backend shares (default: `CudaDevice`, one stream and one context-memory buffer per run)."""
        self.name = flavor
        self.flavor = flavor
        self._module, self._devices, self._device = module, devices, None
        self.cuda_graphs = cuda_graphs  # off: never measured on the Orin (tensorrt_graphs.py)

    @property
    def trt(self):
        return self._module if self._module is not None else import_trt(self.flavor)

    def shared_device(self):
        """The device all sessions of this backend share, made when the first engine has loaded."""
        if self._device is None:
            if self._devices is None:
                from cetrt.backends.tensorrt_device import CudaDevice

                self._devices = CudaDevice
            self._device = self._devices()
        return self._device

    @property
    def context_memory_bytes(self) -> int:
        """The shared context memory its sessions hold now (count it with the engines)."""
        return 0 if self._device is None else self._device.scratch_bytes

    def version(self) -> str:
        return self.trt.__version__

    def check_device(self, target: Target, check: bool) -> str:
        """The compute capability to build for; refuses a target that is not the GPU present, unless check."""
        if check:
            if self.flavor == "tensorrt-rtx" and target.compute_capability not in RTX_COMPUTE_CAPABILITIES:
                return RTX_STAND_IN
            return target.compute_capability or RTX_STAND_IN
        gpu = current_gpu()
        if gpu is None:
            raise UserError(f"building {self.flavor} engines for {target.name} needs its GPU, and this machine has none; "
                            "build on the target device, or pass --check to only parse and build")
        if gpu.compute_capability != target.compute_capability:
            raise UserError(
                f"target {target.name} is compute capability {target.compute_capability}, but this GPU is {gpu.name} "
                f"({gpu.compute_capability}); a TensorRT engine runs only where it was built. Build on the target "
                "device, choose the target of this GPU, or pass --check to only parse and build"
            )
        return gpu.compute_capability

    def build(self, onnx_path: Path, engine_path: Path, block: BlockSpec, target: Target,
              settings: BuildSettings) -> BuildResult:
        trt = self.trt
        features = Features.of(self.flavor, trt.__version__)
        check = settings.check
        compute_capability = self.check_device(target, check)
        plan = settings.shape_plan
        if plan is None:
            raise ValueError("TensorRT builds need a shape plan (optimization profiles)")
        start = time.perf_counter()
        # the layer list comes from the verbose log only in check mode; otherwise the inspector reads the engine
        keep_layers = (lambda message: message.startswith(LAYERS_MESSAGE)) if check else (lambda message: False)
        logger = capturing_logger(trt, trt.ILogger.Severity.WARNING, keep_layers)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise UserError(f"{onnx_path}: the {self.flavor} ONNX parser rejected this block: {errors}; re-export it")
        config = builder.create_builder_config()
        # Without a GPU, TensorRT-RTX's builder tries to allocate a set workspace limit and fails (measured:
        # OutOfMemory for the head at 0.5, 1, 2 and 8 GiB limits); check builds leave the pool at its default.
        workspace = None if check else target.workspace_bytes
        if workspace:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        config.builder_optimization_level = int(settings.optimization_level)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profiles = plan.profiles()
        for shape_profile in profiles:
            profile = builder.create_optimization_profile()
            for tensor in block.inputs:
                dims = [tuple(d if isinstance(d, int) else bound[d] for d in tensor.shape)
                        for bound in (shape_profile.min, shape_profile.opt, shape_profile.max)]
                profile.set_shape(tensor.name, *dims)
            config.add_optimization_profile(profile)
        cache_path = engine_path.parent / TIMING_CACHE
        timing_cache = features.timing_cache and attach_timing_cache(config, cache_path)
        if features.compute_capability_targeting:
            config.num_compute_capabilities = 1
            enum = getattr(trt.ComputeCapability, RTX_COMPUTE_CAPABILITIES[compute_capability])
            if not config.set_compute_capability(enum, 0):
                raise UserError(f"{self.flavor} {trt.__version__} cannot build for compute capability {compute_capability}")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"{onnx_path}: {self.flavor} could not build this block: "
                            f"{'; '.join(logger.errors()[-3:]) or 'no error message'}")
        if timing_cache:  # before the engine is written: nothing after that can fail on the cache
            save_timing_cache(config, cache_path)
        engine_path.write_bytes(serialized)
        seconds = time.perf_counter() - start
        layers, context_memory = self._inspect(trt, features, logger, serialized, check)
        report = engine_path.with_name(engine_path.name.replace(self.engine_suffix, ".layers.json"))
        report.write_text(json.dumps({"block": block.name, "layers": layers}, indent=1) + "\n")
        return BuildResult(files=(engine_path,), seconds=seconds, details={
            "tensorrt_version": trt.__version__,
            "compute_capability": compute_capability,
            "check_only": check,
            "workspace_bytes": workspace,
            "profiles": [p.to_json() for p in profiles],
            "num_layers": len(layers),
            "layer_report": report.name,
            "timing_cache": timing_cache,
            # a context's device memory at the largest profile corner (None: check builds cannot load the engine)
            "context_memory_bytes": context_memory,
        })

    def _inspect(self, trt, features, logger, serialized, check: bool) -> tuple[list[dict], int | None]:
        """The layer report, and the context memory the engine needs at most (when it loads here)."""
        if not check:  # the engine loads here (built on its GPU): the inspector is authoritative
            engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
            if engine is not None:
                from cetrt.backends.tensorrt_runtime import engine_context_memory

                return layers_from_inspector(trt, engine), engine_context_memory(engine, features)
        return layers_from_log([message for _, message in logger.messages]), None

    def load(self, source: EngineSource, target: Target, settings: LoadSettings) -> Session:
        from cetrt.backends.tensorrt_runtime import TensorRTSession

        return TensorRTSession(self.trt, self.flavor, source, target, devices=self.shared_device,
                               cuda_graphs=self.cuda_graphs)
