"""A fake TensorRT 10.3 for CI: the Python API surface cetrt's builder and runtime use, computing with ONNX Runtime.

What it is: a module that stands where `tensorrt` would. The "builder" parses an ONNX file, checks the
optimization profiles and serializes a fake engine (a header with the I/O table, the profiles and the TensorRT
version, then the ONNX graph). The "runtime" deserializes that (None for bytes it cannot read or from another
version), and an execution context enforces what TensorRT's does: shapes inside the current profile
(`set_input_shape` returns False otherwise), every address set, user-managed context memory set and large
enough for the shapes. `execute_async_v3` only queues the work on the stream; it runs when the stream is
synchronised (`HostDevice.synchronize`/`to_host`), reading its inputs from the raw addresses it was given
(NumPy over ctypes) and writing its outputs to theirs, after checking that every buffer it was given is
still alive: a runtime that frees a buffer before the stream is done fails here as it would corrupt results
on a GPU. `HostDevice` is the runtime's `Device` over torch CPU tensors and this fake stream; graph capture
records the queued work and replays it.
What it proves: cetrt's use of the API (profile choice, shapes, dtypes, addresses, buffer lifetimes, context
memory, refusals). What it cannot: TensorRT's own behaviour on the Orin (its kernels, numerics, memory use,
timing, which errors it really raises and when).
Usage: `TensorRTBackend("tensorrt", module=fake_tensorrt, devices=fake_tensorrt.HostDevice)`.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import struct
import weakref

import numpy as np
import onnx
import onnxruntime
import torch

from cetrt.backends.tensorrt_device import Device

__version__ = "10.3.0.26"
MAGIC = b"FAKETRT1"
CACHE_MAGIC = b"FAKECACH"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL}
NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64,
         DataType.BOOL: np.bool_}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class ProfilingVerbosity(enum.Enum):
    DETAILED = 2


class LayerInformationFormat(enum.Enum):
    JSON = 1


class ILogger:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass

    def log(self, severity, message):
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = ILogger.Severity

    def __init__(self, min_severity=ILogger.Severity.WARNING):
        super().__init__()
        self.min_severity = min_severity


class FakeTensorRTError(AssertionError):
    """A misuse the real TensorRT would turn into wrong results or a crash on the GPU."""


# ---- the builder -----------------------------------------------------------------------------------------------

class _Error:
    def __init__(self, text):
        self.text = text

    def desc(self):
        return self.text


class Network:
    def __init__(self):
        self.model = None
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []


def _tensor(value) -> dict:
    dims = [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "dtype": ONNX_TYPES[value.type.tensor_type.elem_type].name, "dims": dims}


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.logger, self.errors = network, logger, []

    def parse_from_file(self, path) -> bool:
        model = onnx.load(str(path))
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as error:
            self.errors = [_Error(str(error)[:200])]
            return False
        initializers = {i.name for i in model.graph.initializer}
        self.network.model = model
        self.network.inputs = [_tensor(v) for v in model.graph.input if v.name not in initializers]
        self.network.outputs = [_tensor(v) for v in model.graph.output]
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class OptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name, min, opt, max):
        self.shapes[name] = [list(min), list(opt), list(max)]


class TimingCache:
    def __init__(self, version: str, entries: int = 0):
        self.version, self.entries = version, entries

    def serialize(self) -> bytes:
        body = json.dumps({"version": self.version, "entries": self.entries}).encode()
        return CACHE_MAGIC + struct.pack("<I", len(body)) + body


def read_timing_cache(blob: bytes) -> TimingCache | None:
    """A cache from its bytes; None when they are not a whole cache (what `create_timing_cache` rejects)."""
    if not blob:
        return TimingCache(__version__)
    if blob[:8] != CACHE_MAGIC or len(blob) < 12 or len(blob) != 12 + struct.unpack("<I", blob[8:12])[0]:
        return None
    data = json.loads(blob[12:])
    return TimingCache(data["version"], data["entries"])


class BuilderConfig:
    def __init__(self):
        self.profiles: list[OptimizationProfile] = []
        self.pool_limits: dict = {}
        self.builder_optimization_level = 3
        self.profiling_verbosity = None
        self.timing_cache: TimingCache | None = None

    def set_memory_pool_limit(self, pool, size):
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes):
        return read_timing_cache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache.version != __version__ and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags: int):
        return Network()

    def create_builder_config(self):
        return BuilderConfig()

    def create_optimization_profile(self):
        return OptimizationProfile()

    def build_serialized_network(self, network, config) -> bytes | None:
        self.logger.log(ILogger.Severity.VERBOSE, "fake builder: a verbose message nobody should keep")
        profiles = []
        for profile in config.profiles:
            shapes = {}
            for tensor in network.inputs:
                if tensor["name"] not in profile.shapes:
                    self.logger.log(ILogger.Severity.ERROR, f"no shapes for {tensor['name']} in a profile")
                    return None
                low, opt, high = profile.shapes[tensor["name"]]
                fixed = all(d == lo == hi for d, lo, hi in zip(tensor["dims"], low, high) if isinstance(d, int))
                if len(low) != len(tensor["dims"]) or not fixed or not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                    self.logger.log(ILogger.Severity.ERROR, f"bad profile for {tensor['name']}: {low} {opt} {high}")
                    return None
                shapes[tensor["name"]] = [low, opt, high]
            profiles.append(shapes)
        if config.timing_cache is not None:
            config.timing_cache.entries += len(network.model.graph.node)
        self.logger.log(ILogger.Severity.VERBOSE, "Layers:\n" + "\n".join(
            f"Name: {n.name}, LayerType: {n.op_type}, Inputs: []" for n in network.model.graph.node))
        header = json.dumps({"version": __version__, "inputs": network.inputs, "outputs": network.outputs,
                             "profiles": profiles}).encode()
        model = network.model.SerializeToString()
        return MAGIC + struct.pack("<II", len(header), len(model)) + header + model


# ---- the runtime -----------------------------------------------------------------------------------------------

_queues: dict[int, list] = {}  # stream handle -> work queued on it
_capturing: dict[int, list] = {}  # stream handle -> work recorded by a graph capture in progress
_allocations: dict[int, tuple[int, weakref.ref]] = {}  # address -> (bytes, the buffer owning it)
_handles = itertools.count(1)
executions: list[dict] = []  # what each execution used, for tests to inspect


def _enqueue(stream: int, work) -> None:
    (_capturing[stream] if stream in _capturing else _queues.setdefault(stream, [])).append(work)


def run_stream(stream: int) -> None:
    queue = _queues.get(stream, [])
    while queue:
        queue.pop(0)()


def register(buffer: torch.Tensor) -> torch.Tensor:
    _allocations[buffer.data_ptr()] = (buffer.numel() * buffer.element_size(), weakref.ref(buffer))
    return buffer


def owner_of(address: int, nbytes: int):
    """The live buffer that holds [address, address + nbytes), resolved now (as a kernel's pointer would be)."""
    entry = _allocations.get(address)
    if entry is None or entry[1]() is None or entry[0] < nbytes:
        raise FakeTensorRTError(f"address {address:#x} ({nbytes} bytes) is not a live buffer of the device")
    return entry[1]


def _view(address: int, shape, dtype) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        data = bytes(data)
        if data[:8] != MAGIC or len(data) < 16:
            return None
        header_len, model_len = struct.unpack("<II", data[8:16])
        if len(data) != 16 + header_len + model_len:
            return None
        header = json.loads(data[16:16 + header_len])
        if header["version"] != __version__:
            self.logger.log(ILogger.Severity.ERROR, "serialized engine from another TensorRT version")
            return None
        return Engine(header, data[16 + header_len:])


class Engine:
    def __init__(self, header: dict, model: bytes):
        self.header = header
        self.tensors = {t["name"]: (TensorIOMode.INPUT, t) for t in header["inputs"]}
        self.tensors.update({t["name"]: (TensorIOMode.OUTPUT, t) for t in header["outputs"]})
        self.names = list(self.tensors)
        self.model = onnx.load_from_string(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.tensors[name][0] if name in self.tensors else TensorIOMode.NONE

    def get_tensor_dtype(self, name):
        return DataType[self.tensors[name][1]["dtype"]]

    @property
    def num_optimization_profiles(self):
        return len(self.header["profiles"])

    def get_tensor_profile_shape(self, name, profile):
        return [tuple(s) for s in self.header["profiles"][profile][name]]

    def memory_for(self, shapes: dict[str, tuple]) -> int:
        """Context memory for these input shapes: 256 bytes plus 8 per input element (a stand-in formula)."""
        return 256 + 8 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())

    @property
    def device_memory_size_v2(self):
        return max(self.memory_for({n: s[2] for n, s in p.items()}) for p in self.header["profiles"])

    @property
    def device_memory_size(self):  # the pre-10.1 name (gone in 11.x)
        return self.device_memory_size_v2

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        return ExecutionContext(self, strategy)

    def create_engine_inspector(self):
        return EngineInspector(self)


class EngineInspector:
    def __init__(self, engine):
        self.engine = engine

    def get_engine_information(self, format):
        return json.dumps({"Layers": [{"Name": n.name, "LayerType": n.op_type} for n in self.engine.model.graph.node]})


class ExecutionContext:
    def __init__(self, engine: Engine, strategy):
        self.engine, self.strategy = engine, strategy
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.memory_sized = False

    def set_optimization_profile_async(self, index, stream) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile, self.shapes = index, {}
        return True

    def set_input_shape(self, name, shape) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or not all(lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            return False
        self.shapes[name] = shape
        self.memory_sized = False
        return True

    def _dims(self) -> dict[str, int]:
        dims = {}
        for name, shape in self.shapes.items():
            for d, n in zip(self.engine.tensors[name][1]["dims"], shape):
                if isinstance(d, str):
                    dims[d] = n
        return dims

    def get_tensor_shape(self, name):
        mode, tensor = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT and name in self.shapes:
            return self.shapes[name]
        dims = self._dims()
        return tuple(d if isinstance(d, int) else dims.get(d, -1) for d in tensor["dims"])

    def set_tensor_address(self, name, address) -> bool:
        if name not in self.engine.tensors or not address:
            return False
        self.addresses[name] = int(address)
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        self.memory_sized = True
        return self.engine.memory_for(self.shapes)

    def set_device_memory(self, memory, size):
        self.memory = (int(memory), int(size))

    def execute_async_v3(self, stream) -> bool:
        inputs = [n for n in self.engine.names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT]
        if set(self.shapes) != set(inputs) or set(self.addresses) != set(self.engine.names):
            return False
        needed = self.engine.memory_for(self.shapes)
        if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED:
            if self.memory is None or not self.memory_sized or self.memory[1] < needed:
                return False
        shapes = {n: tuple(self.get_tensor_shape(n)) for n in self.engine.names}
        dtypes = {n: NUMPY[self.engine.get_tensor_dtype(n)] for n in self.engine.names}
        # addresses and their buffers are fixed now, as a kernel launch fixes them
        plan = {n: (self.addresses[n], owner_of(self.addresses[n], int(np.prod(shapes[n])) * np.dtype(dtypes[n]).itemsize))
                for n in self.engine.names}
        scratch = None if self.memory is None else (self.memory[0], owner_of(self.memory[0], needed))
        record = {"profile": self.profile, "shapes": shapes, "scratch": self.memory, "needed": needed}

        def work():
            for name, (address, owner) in plan.items():
                if owner() is None:
                    raise FakeTensorRTError(f"{name}'s buffer was freed before the stream finished with it")
            if scratch is not None:
                if scratch[1]() is None:
                    raise FakeTensorRTError("the context memory was freed before the stream finished with it")
                _view(scratch[0], (needed,), np.uint8)[:] = 0xA5  # TensorRT scribbles on its scratch memory
            feeds = {n: _view(plan[n][0], shapes[n], dtypes[n]).copy() for n in inputs}
            names = [n for n in self.engine.names if n not in inputs]
            for name, value in zip(names, self.engine.session.run(names, feeds)):
                if tuple(value.shape) != shapes[name]:
                    raise FakeTensorRTError(f"{name}: computed {value.shape}, context said {shapes[name]}")
                _view(plan[name][0], shapes[name], dtypes[name])[...] = value
            executions.append(record)

        _enqueue(int(stream), work)
        return True


# ---- the device the runtime uses with this fake ---------------------------------------------------------------

class HostDevice(Device):
    """The runtime's `Device` over torch CPU tensors, with this fake's stream (work runs at synchronize)."""

    def __init__(self):
        super().__init__()
        self.handle = next(_handles)
        self._held: list = []
        self.uploads = 0  # host arrays copied in
        self.captures = 0

    @property
    def stream_handle(self) -> int:
        return self.handle

    @property
    def byte_dtype(self):
        return torch.uint8

    def empty(self, shape, dtype):
        return register(torch.empty(tuple(shape), dtype=dtype))

    def to_device(self, value, dtype):
        if isinstance(value, torch.Tensor) and value.data_ptr() in _allocations and value.dtype == dtype:
            return value
        self.uploads += 1
        array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return register(torch.from_numpy(np.array(array)).to(dtype).contiguous().clone())

    def copy(self, destination, source) -> None:
        _enqueue(self.handle, lambda: destination.copy_(source))

    def to_host(self, value) -> np.ndarray:
        self.synchronize()
        return value.numpy().copy()

    def hold_until_done(self, objects: list) -> None:
        self._held.append(objects)

    def synchronize(self) -> None:
        run_stream(self.handle)
        self._held.clear()

    def capture(self, enqueue):
        _capturing[self.handle] = []
        try:
            enqueue()
        finally:
            recorded = _capturing.pop(self.handle)
        self.captures += 1
        return lambda: _queues.setdefault(self.handle, []).extend(recorded)
