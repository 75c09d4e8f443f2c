"""Records shared by every stage: the model's shape, a block's interface, and a target device.

Frozen dataclasses built with keywords; they round-trip through JSON (`to_json` / `from_json`) so the files
between stages (blocks.json, manifest.json) carry them without importing a stage's internals.
A model's spec comes from its family (`cetrt.families.spec_from_config`).
Usage: `Target.from_name("orin-agx-32gb")`; `spec.layer_bytes("float16")`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cetrt.errors import UserError

# Tensor names at the block boundaries: the one place they are spelled.
INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
SEGMENT_IDS = "segment_ids"  # [B, L] int32: 0 context, k + 1 ending k, PAD_SEGMENT padding; layer blocks build
# the packed attention mask from them in the graph (cetrt.families.common.packed_mask)
PAD_SEGMENT = -1
HIDDEN = "hidden"
HIDDEN_OUT = "hidden_out"
SCORE_INDEX = "score_index"
TARGET_IDS = "target_ids"
LOGPROBS = "logprobs"
GREEDY = "greedy"

DTYPES = ("float16", "float32")
# How engines hold their weights: "inside" (one engine per block) or "inputs" (one engine per block type, each
# block's weights in a file bound to its inputs). The default is the measured faster way (README, "Two ways").
WEIGHTS_LAYOUTS = ("inputs", "inside")
DEFAULT_WEIGHTS = "inputs"
BLOCK_KINDS = ("embed", "layers", "head")

GiB = 1 << 30


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only LM, enough to size memory and FLOP without loading weights."""

    architecture: str  # the model family's name (cetrt.families)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    embed_dim: int  # OPT's word_embed_proj_dim; equals hidden_size elsewhere

    def layer_params(self) -> int:
        """Parameters of one decoder layer (weights and biases), for memory arithmetic: the family's count."""
        from cetrt.families import get_family

        return get_family(self.architecture).layer_params(self)

    def layer_bytes(self, dtype: str) -> int:
        return self.layer_params() * dtype_bytes(dtype)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        return cls(**data)


def dtype_bytes(dtype: str) -> int:
    return {"float16": 2, "float32": 4}[dtype]


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a block; string dims are dynamic (B, L, S)."""

    name: str
    dtype: str
    shape: tuple

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


@dataclass(frozen=True)
class BlockSpec:
    """One exported block: `embed`, a run of decoder layers [first, last), or `head`."""

    index: int
    kind: str
    first_layer: int
    last_layer: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def name(self) -> str:
        if self.kind == "layers":
            return f"layers[{self.first_layer}:{self.last_layer}]"
        return self.kind

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "kind": self.kind,
            "first_layer": self.first_layer,
            "last_layer": self.last_layer,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict) -> "BlockSpec":
        return cls(
            index=data["index"],
            kind=data["kind"],
            first_layer=data["first_layer"],
            last_layer=data["last_layer"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class Target:
    """A device engines are built for, and its limits. Figures marked datasheet are not measured here."""

    name: str
    device: str  # "cpu" or "cuda"
    compute_capability: str | None
    memory_bytes: int  # what the runner may use for engines and activations
    workspace_bytes: int
    backends: tuple[str, ...]
    default_dtype: str
    note: str = ""
    # Datasheet figures for predicting a run on a device not at hand (calib/predict.py); None where there is none.
    peak_fp16_flops: float | None = None  # dense FP16 tensor-core FLOP/s
    memory_bandwidth_bytes_per_s: float | None = None
    peak_source: str = ""  # where the two figures above come from
    default_efficiency: float | None = None  # fraction of peak assumed for whole-run compute when not measured
    efficiency_source: str = ""
    devices: int = 1  # identical devices of one machine; memory_bytes and the rates above are per device

    @classmethod
    def from_name(cls, name: str) -> "Target":
        if name not in TARGETS:
            raise UserError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}")
        return TARGETS[name]

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["backends"] = list(self.backends)
        return data


_H200_30B_EFFICIENCY = (
    "cetrt's measured compute at the product's size on an H200 (ORT CUDA EP, LLaMA-30B shape, 1 layer per engine, "
    "attention fused, separate projections, RoPE's halves swapped by one Slice (since reverted), rows padded to "
    "multiples of 8, 4,096 tokens per batch as calib chose, all 10,042 items: 1.088e17 FLOP of the batches as run, "
    "padding included as the predictor counts it, in 202.8 s of compute = 536 TFLOP/s = 54% of the 989 TFLOP/s "
    "dense FP16 datasheet peak; 53% counting useful FLOP only; 2026-12-03, bench/results/flop_as_run_llama30b.json "
    "(that run's gpu_llama30b.json is in git history; the file's run since chose 2,048 tokens a batch on calib's "
    "second-run timings, since fixed: 518 TFLOP/s, 52%, flop_as_run_llama30b_2048_tokens.json; on 2026-12-04, "
    "calib timing steady runs, 8,192 tokens: 535 TFLOP/s, 54%, flop_as_run_llama30b_8192_tokens.json). "
    "Earlier that day, with RoPE's Split and Concat (the export's form): 531 TFLOP/s, 54% "
    "(flop_as_run_llama30b_split_rope.json); padded to multiples of 32 at 8,192 tokens a batch: 51% useful, 56% of "
    "its padded FLOP (flop_as_run_llama30b_pad32.json), and the predictor took the 51% as if it were the latter; "
    "47% useful on 2026-12-02 with fused projections, 43% and 44% in earlier runs at 2,048 tokens); ONNX "
    "Runtime's engines, not TensorRT's"
)
_H200_30B_FRACTION = 0.54  # of peak, on the FLOP of the batches as run: _H200_30B_EFFICIENCY
_H100_EFFICIENCY = (
    "cetrt's measured whole-run compute on an H100 (ORT CUDA EP, LLaMA-7B shape, 2,000 items, 2,048 tokens per "
    "batch: 2.55e15 engine FLOP by calib/flop.py in 9.49 s of compute = 268 TFLOP/s = 27% of 989; "
    "bench/results/gpu_h100_llama7b_random_2000.json)"
)
_ORIN_SOURCE = (
    "datasheet-derived: {sms} SMs ({cores} CUDA cores, {tcs} third-generation tensor cores) at up to {mhz} MHz; "
    "Orin's tensor cores do 1,024 dense FP16 FMA per SM per clock, A100's rate (AGX Orin 64GB: 170 sparse INT8 TOPS "
    "from 16 SMs at 1.3 GHz = 4,096 dense INT8 ops per SM per clock), so {sms} x 2,048 FLOP x {ghz} GHz = "
    "{tflops} TFLOP/s; FP16 with FP32 accumulate is not stated for Orin: full rate assumed, as on A100 (GeForce "
    "GA10x runs it at half rate: if Orin does, the floor of FP32-accumulating GEMMs doubles); 204.8 GB/s LPDDR5 "
    "(256-bit, 6,400 MT/s) shared by CPU and GPU"
)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="cpu", device="cpu", compute_capability=None, memory_bytes=16 * GiB, workspace_bytes=0,
            backends=("onnxruntime",), default_dtype="float32",
            note="ONNX Runtime CPU; FP32 by default because ORT's x86 CPU kernels for FP16 MatMul cast to FP32",
        ),
        Target(
            name="orin-agx-32gb", device="cuda", compute_capability="8.7", memory_bytes=28 * GiB,
            workspace_bytes=2 * GiB, backends=("tensorrt", "onnxruntime"), default_dtype="float16",
            note="Jetson AGX Orin 32GB: 32 GB shared by CPU and GPU, about 28 GB usable (datasheet, not measured)",
            peak_fp16_flops=14 * 2048 * 930e6, memory_bandwidth_bytes_per_s=204.8e9,
            peak_source=_ORIN_SOURCE.format(sms=14, cores="1,792", tcs=56, mhz=930, ghz=0.93, tflops=26.7),
            default_efficiency=_H200_30B_FRACTION,
            efficiency_source="assumption: not measured on an Orin; the fraction of peak of " + _H200_30B_EFFICIENCY,
        ),
        Target(
            name="orin-agx-64gb", device="cuda", compute_capability="8.7", memory_bytes=60 * GiB,
            workspace_bytes=4 * GiB, backends=("tensorrt", "onnxruntime"), default_dtype="float16",
            note="Jetson AGX Orin 64GB (datasheet, not measured)",
            peak_fp16_flops=16 * 2048 * 1.3e9, memory_bandwidth_bytes_per_s=204.8e9,
            peak_source=_ORIN_SOURCE.format(sms=16, cores="2,048", tcs=64, mhz="1,300", ghz=1.3, tflops=42.6),
            default_efficiency=_H200_30B_FRACTION,
            efficiency_source="assumption: not measured on an Orin; the fraction of peak of " + _H200_30B_EFFICIENCY,
        ),
        Target(
            name="rtx", device="cuda", compute_capability="8.6", memory_bytes=20 * GiB,
            workspace_bytes=4 * GiB, backends=("tensorrt-rtx", "tensorrt", "onnxruntime"), default_dtype="float16",
            note="a desktop RTX GPU (Ampere or newer) with 24 GB",
        ),
        Target(
            name="cuda", device="cuda", compute_capability=None, memory_bytes=64 * GiB, workspace_bytes=4 * GiB,
            backends=("onnxruntime",), default_dtype="float16",
            note="any CUDA GPU through ONNX Runtime's CUDA execution provider (onnxruntime-gpu)",
        ),
        Target(
            name="h100", device="cuda", compute_capability="9.0", memory_bytes=72 * GiB,
            workspace_bytes=8 * GiB, backends=("tensorrt", "onnxruntime"), default_dtype="float16",
            note="NVIDIA H100 80GB",
            peak_fp16_flops=989.4e12, memory_bandwidth_bytes_per_s=3.35e12,
            peak_source="datasheet: H100 SXM5 80GB, 989.4 TFLOP/s dense FP16/BF16 tensor (FP32 accumulate at the "
                        "same rate), 3.35 TB/s HBM3; an FP16 8192^3 torch matmul measured 748 TFLOP/s on the GPU "
                        "machine (76% of it)",
            default_efficiency=0.27, efficiency_source="measured on an H100, not by calib.json: " + _H100_EFFICIENCY,
        ),
        Target(
            name="v100x4", device="cuda", compute_capability="7.0", memory_bytes=30 * GiB,
            workspace_bytes=2 * GiB, backends=("tensorrt", "onnxruntime"), default_dtype="float16",
            note="4x NVIDIA V100 SXM2 32GB, the CE Challenge 2023 machine (372 s for LLaMA-30B); about 30 GiB usable "
                 "per GPU (datasheet, not measured)",
            peak_fp16_flops=125e12, memory_bandwidth_bytes_per_s=900e9,
            peak_source="datasheet: NVIDIA Tesla V100 (SXM2 32GB), 125 TFLOP/s dense FP16 tensor per GPU (FP32 "
                        "accumulate at the same rate), 900 GB/s HBM2; per device, 4 devices",
            default_efficiency=_H200_30B_FRACTION,
            efficiency_source="assumption: not measured on a V100; the fraction of peak of " + _H200_30B_EFFICIENCY,
            devices=4,
        ),
    )
}
