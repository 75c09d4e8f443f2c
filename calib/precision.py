"""The precision check: where FP16 arithmetic overflows or drifts, keep those ops in FP32 (never less precision).

A few dataset items run through every block of an FP16 export and through its FP32 twin
(cetrt.islands.float32_twin: FP16-rounded weights, FP32 arithmetic) on the same inputs: each block gets
the reference hidden states (the previous twin's output, rounded to the FP16 interface), so its error is its own.
Every float intermediate is compared by name, on ONNX Runtime's CPU provider with basic optimizations only
(op-by-op FP16 rounding, as a strongly typed network computes).

Criterion: a block fails when an output's max abs error exceeds `threshold` times the twin's largest magnitude
of that output, or when the FP16 block yields inf/NaN where the twin is finite, or when an FP16 tensor's true
(twin) value is beyond FP16's range (a backend that keeps some FP16 results in FP32, as ORT's CPU provider does,
would otherwise hide the overflow that TensorRT shows). The default 1e-2 is 20 FP16 units in the last place
(2^-11) of the output's scale: ordinary rounding stays well below it (the real SmolLM2-135M export: at most
3.3e-3 in any block over 32 items; tiny random models about 1e-3), while an overflow, or a cancellation that
loses digits, shows up as 1e-1 and more.

Responsible ops: the first nodes (topological order) whose FP16 result leaves FP16's range while their inputs are
in range, or else whose relative error passes the threshold while their inputs' does not. They become an FP32
island, extended to the consumers of any island result that is itself out of FP16's range (casting it back would
overflow); the block is checked again, up to `max_rounds`, then as a last resort the whole block computes in FP32
inside. A block *output* beyond FP16's range cannot be fixed by islands: that is a UserError (export in float32).
The islands go to calib.json only: the export's files stay as export wrote them, and the build applies the
islands to a copy of each graph it builds (cetrt.islands, the same transform this check ran).
Usage: `section = check_precision(Path("artifacts/onnx/m"), "../shared/data/hellaswag/hellaswag_val.jsonl")`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from cetrt.errors import UserError
from cetrt.formats.blocks import ExportedBlock, ExportedModel, read_blocks
from cetrt.islands import FLOAT, FLOAT16, float32_twin, islands_of, named_nodes, tensor_types, with_fp32_islands
from cetrt.spec import HIDDEN, HIDDEN_OUT
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_docs
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import offline_tokenizer

DEFAULT_ITEMS = 32
DEFAULT_THRESHOLD = 1e-2
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
REFERENCE = "each FP16 block vs its FP32 twin on the same inputs (FP16-rounded weights)"
METRIC = "max abs error / max abs value of the twin's output; inf or NaN where the twin is finite fails"
_TOKENS_PER_BATCH = 1024
_INLINE_LIMIT = 1 << 30  # larger models go to ORT through a file: protobuf cannot hold more than 2 GB
_FIX = "re-run the export (`make engines` or `ce-export`)"


@dataclass
class TensorStats:
    """One tensor's FP16-vs-twin comparison, accumulated over batches."""

    fp16: bool  # FP16 in the block as run (FP32 tensors cannot overflow FP16)
    max_ref: float = 0.0
    max_fp16: float = 0.0  # largest finite magnitude of the block's value
    max_err: float = 0.0
    sum_err: float = 0.0
    count: int = 0
    nonfinite: bool = False  # inf or NaN in the block where the twin is finite

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        got, want = got.astype(np.float32), want.astype(np.float32)
        finite = np.isfinite(got)
        self.nonfinite |= bool(np.any(~finite & np.isfinite(want)))
        self.max_ref = max(self.max_ref, float(np.max(np.abs(want), initial=0.0)))
        self.max_fp16 = max(self.max_fp16, float(np.max(np.abs(got[finite]), initial=0.0)))
        err = np.abs(got - want)
        err = err[finite & np.isfinite(want)]
        self.max_err = max(self.max_err, float(np.max(err, initial=0.0)))
        self.sum_err += float(err.sum(dtype=np.float64))
        self.count += err.size

    @property
    def relative(self) -> float:
        if self.nonfinite:
            return float("inf")
        return self.max_err / self.max_ref if self.max_ref > 0 else (float("inf") if self.max_err > 0 else 0.0)

    @property
    def out_of_range(self) -> bool:
        """An FP16 tensor whose true value FP16 cannot hold."""
        return self.fp16 and self.max_ref > FP16_MAX


def _session(model: onnx.ModelProto, tmp: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # no fusions: op-by-op rounding
    if model.ByteSize() < _INLINE_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    path = Path(tempfile.mkdtemp(dir=tmp)) / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _probed(model: onnx.ModelProto, names: list[str], types: dict[str, int]) -> onnx.ModelProto:
    """A copy with every named tensor a graph output, so one run yields all intermediates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_tensor_value_info(n, types[n], None) for n in names if n not in present)
    return out


def _batches(export_dir: Path, exported: ExportedModel, dataset: str, items: int) -> tuple[int, list[dict]]:
    tokenizer = offline_tokenizer(export_dir / Path(exported.tokenizer_files[0].path).parent)
    docs = load_docs(dataset, items)
    rows = pack_docs(tokenizer, docs)
    batches = make_batches(rows, ShapePlan(tokens_per_batch=_TOKENS_PER_BATCH), exported.model.max_positions)
    return len(docs), [b.arrays() for b in batches]


class _Block:
    """One block file, its twin, and the float tensors they share, measured over the batches."""

    def __init__(self, export_dir: Path, block: ExportedBlock, tmp: Path):
        self.export_dir, self.block, self.tmp = export_dir, block, tmp
        self.path = export_dir / block.onnx_file.path
        for record in block.files:  # the bytes checked are the bytes blocks.json pins
            record.check_digest(export_dir, None, _FIX)
        self.model = named_nodes(onnx.load(str(self.path)))
        self.types = tensor_types(self.model)
        graph = self.model.graph
        outputs = [o.name for o in graph.output if self.types.get(o.name) in (FLOAT16, FLOAT)]
        produced = [o for n in graph.node for o in n.output if o and self.types.get(o) in (FLOAT16, FLOAT)]
        self.outputs, self.names = outputs, list(dict.fromkeys(produced + outputs))
        self.twin = _session(_probed(float32_twin(self.model), self.names, {n: FLOAT for n in self.names}), tmp)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def measure(self, model: onnx.ModelProto, feeds: list[dict]) -> tuple[dict[str, TensorStats], list]:
        """Stats per tensor of `model` (this block, maybe with islands) vs the twin; the twin's hidden_out."""
        types = tensor_types(model)
        session = _session(_probed(model, self.names, types), self.tmp)
        stats = {n: TensorStats(fp16=types[n] == FLOAT16) for n in self.names}
        hidden = []
        for feed in feeds:
            fp16 = {k: v.astype(np.float16) if types.get(k) == FLOAT16 else v for k, v in feed.items()}
            got = dict(zip(self.names, session.run(self.names, fp16)))
            want = dict(zip(self.names, self.twin.run(self.names, feed)))
            for name in self.names:
                stats[name].add(got[name], want[name])
            hidden.append(want.get(HIDDEN_OUT))
        return stats, hidden

    def passes(self, stats: dict[str, TensorStats], threshold: float) -> bool:
        """No FP16 tensor out of range (judged by the twin: a backend may keep some FP16 results in FP32 and
        hide it), no inf/NaN, every output within the threshold."""
        return (not any(s.nonfinite or s.out_of_range for s in stats.values())
                and all(stats[o].relative <= threshold for o in self.outputs))

    def summary(self, stats: dict[str, TensorStats]) -> dict:
        outs = [stats[o] for o in self.outputs]
        return {
            "max_abs_error": max(s.max_err for s in outs),
            "mean_abs_error": sum(s.sum_err for s in outs) / max(1, sum(s.count for s in outs)),
            "relative_error": max(s.relative for s in outs),
            "max_fp16_magnitude": max((s.max_fp16 for s in stats.values() if s.fp16), default=0.0),
            "nonfinite": any(s.nonfinite for s in stats.values()),
        }

    def responsible(self, stats: dict[str, TensorStats], chosen: set[str], threshold: float) -> tuple[set[str], str]:
        """The first ops that overflow FP16 (or else drift), grown to the consumers of out-of-range results."""
        def first(bad) -> list[onnx.NodeProto]:
            return [n for n in self.model.graph.node if n.name not in chosen
                    and any(bad(stats[o]) for o in n.output if o in stats)
                    and not any(bad(stats[i]) for i in n.input if i in stats)]

        seeds = first(lambda s: s.out_of_range or s.nonfinite)
        if seeds:
            reason = "FP16 overflow: " + "; ".join(
                f"{o} ({n.op_type} {n.name}) reaches {stats[o].max_ref:.3g}, beyond FP16's {FP16_MAX:g}" if stats[o].out_of_range
                else f"{o} ({n.op_type} {n.name}) is inf/NaN in FP16, finite in FP32"
                for n in seeds for o in n.output if o in stats and (stats[o].out_of_range or stats[o].nonfinite))
        else:
            seeds = first(lambda s: s.relative > threshold)
            worst = max(self.outputs, key=lambda o: stats[o].relative)
            reason = f"drift: {worst} relative error {stats[worst].relative:.3g} > {threshold:g}; first past it at " + ", ".join(
                f"{o} ({n.op_type} {n.name}, {stats[o].relative:.3g})" for n in seeds for o in n.output if o in stats)
        island = chosen | {n.name for n in seeds}
        grown = True
        while grown:  # a result out of FP16's range must not leave the island: take its consumers in
            grown = False
            for node in [n for n in self.model.graph.node if n.name in island]:
                for name in node.output:
                    if name in stats and stats[name].out_of_range:
                        new = {c.name for c in self.consumers.get(name, [])} - island
                        island |= new
                        grown |= bool(new)
        return island - chosen, reason


def _interface_check(block: ExportedBlock, stats: dict[str, TensorStats], path: Path) -> None:
    for out in block.spec.outputs:
        s = stats.get(out.name)
        if s is not None and out.dtype == "float16" and s.max_ref > FP16_MAX:
            raise UserError(
                f"{path}: block {block.spec.name} outputs {out.name} up to {s.max_ref:.4g} in FP32, beyond FP16's "
                f"{FP16_MAX:g}; an FP32 island cannot fix an FP16 interface: export in float32 (`ce-export --dtype float32`)"
            )


def check_precision(export_dir: Path, dataset: str, items: int = DEFAULT_ITEMS, threshold: float = DEFAULT_THRESHOLD,
                    max_rounds: int = 4, progress: bool = True) -> dict:
    """Check every FP16 block against its FP32 twin, add FP32 islands where needed; calib.json's "precision"."""
    start = time.perf_counter()
    export_dir = Path(export_dir)
    exported = read_blocks(export_dir)
    section = {"items": 0, "threshold": threshold, "metric": METRIC, "reference": REFERENCE, "blocks": [], "islands": []}
    if exported.dtype != "float16":
        return {**section, "note": f"{exported.dtype} export: nothing to check"}
    if threshold <= 0 or max_rounds < 1:
        raise UserError(f"precision threshold {threshold} and rounds {max_rounds}: both must be positive")
    section["items"], batches = _batches(export_dir, exported, dataset, items)
    hidden: list = [None] * len(batches)
    for block in tqdm(exported.blocks, desc="precision", unit="block", disable=not progress):
        feeds = [{n: (h if n == HIDDEN else arrays[n]) for n in block.spec.input_names} for arrays, h in zip(batches, hidden)]
        with tempfile.TemporaryDirectory(prefix="cetrt-precision-") as tmp:  # large models' sessions, per block
            record, islands, twin_hidden = _check_block(export_dir, block, feeds, threshold, max_rounds, Path(tmp))
        section["blocks"].append(record)
        section["islands"] += islands
        hidden = [None if h is None else h.astype(np.float16).astype(np.float32) for h in twin_hidden]
    section["seconds"] = round(time.perf_counter() - start, 2)
    return section


def _check_block(export_dir: Path, block: ExportedBlock, feeds: list[dict], threshold: float, max_rounds: int,
                 tmp: Path) -> tuple[dict, list[dict], list]:
    """(the block's record, its islands, the twin's hidden_out per batch for the next block)."""
    checked = _Block(export_dir, block, tmp)
    stats, twin_hidden = checked.measure(checked.model, feeds)
    _interface_check(block, stats, checked.path)
    record = {"index": block.spec.index, "name": block.spec.name, **checked.summary(stats), "islands": [], "after": None}
    islands: list[dict] = []
    _fix(checked, stats, feeds, threshold, max_rounds, record, islands)
    return record, islands, twin_hidden


def _ops(checked: _Block, names) -> list[str]:
    op = {n.name: n.op_type for n in checked.model.graph.node}
    return [op.get(n, "?") for n in names]


def _fix(checked: _Block, stats, feeds, threshold: float, max_rounds: int, record: dict, islands: list) -> None:
    """Islands for a failing block, round by round, checked in memory; `record` and `islands` say which."""
    if checked.passes(stats, threshold):
        return
    chosen: set[str] = set()
    candidate = checked.model
    for round_ in range(1, max_rounds + 2):
        if round_ <= max_rounds:
            new, reason = checked.responsible(stats, chosen, threshold)
        else:  # single ops did not do it: the whole block computes in FP32 inside, FP16 at its interface
            new = {n.name for n in checked.model.graph.node} - chosen
            reason = f"islands of single ops did not bring it within the threshold in {max_rounds} rounds: the whole block in FP32"
        if not new:
            continue
        chosen |= new
        names = sorted(new, key=[n.name for n in checked.model.graph.node].index)
        islands.append({"block": checked.block.spec.name, "index": checked.block.spec.index, "round": round_,
                        "nodes": names, "ops": _ops(checked, names), "reason": reason})
        candidate = with_fp32_islands(checked.model, chosen)
        stats, _ = checked.measure(candidate, feeds)
        if checked.passes(stats, threshold):
            break
    if not checked.passes(stats, threshold):
        raise UserError(f"{checked.path}: block {checked.block.spec.name} still fails the precision check with FP32 "
                        f"inside ({checked.summary(stats)}); export in float32 (`ce-export --dtype float32`)")
    record["islands"] = islands_of(candidate)
    record["after"] = checked.summary(stats)
