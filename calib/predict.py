"""The run-time predictor: a whole HellaSwag run of cetrt's layer-major streaming runner, term by term.

Inputs: a model shape, the dataset's batches as ce-run makes them (calib/workload.py), a target's rates with
their sources (calib/rates.py), a storage read bandwidth and a memory budget. Output: a `Prediction`.
- Passes, chunk size, bytes read and peak memory are the runner's own planner's (cetrt/plan.py
  `plan_from_sizes`), over per-block weight bytes: embed, one block per decoder layer, head.
- Compute: the engines' FLOP (calib/flop.py) at the measured rate, or at peak x a stated efficiency; with the
  datasheet rate, a batch through a block takes no less than reading the block's weights from memory once.
  The head, where calib.json timed it, takes its measured time per scored slot (its log-softmax over the
  vocabulary is memory-bound).
- Reading a block is the read and the digest check of its chunks, side by side on the reader's threads: the
  slower of the two rates sets the time (cetrt/storage.py).
- I/O, as the executor runs: blocks go chunk by chunk, block by block, as one sequence. Streaming, a reader
  thread reads up to `prefetch_depth` blocks ahead; it starts reading block k+1 once block k is loaded, so the
  read hides behind block k's compute over the chunk: exposed = max(0, read(k+1) - compute(k)), and the first
  read is exposed whole. Block 0 of each pass is the embed (a gather, no compute), so layer 0's read in each
  pass is exposed too. Resident, the first pass reads and a loader thread loads each block as it arrives, so
  reads never wait for compute, and later chunks read nothing; as in ce-run with a journal, the first chunk
  holds, as memory allows, the tokens whose compute (calib's rate) covers reading every engine at the storage's
  rate, so the reads hide behind it.
  Engine load (session creation) is serial, per block and pass, from calib.json.
- Total = compute + engine load + exposed I/O. The floor is the FLOP at 100% of peak.
Usage: `prediction = predict_run(PredictOptions(model="llama-30b", target="orin-agx-32gb", storage="sd"))`.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from cetrt.calib import flop
from cetrt.calib.presets import resolve_model
from cetrt.calib.rates import STORAGE_PRESETS, DeviceFigures, Storage, calib_from_option, device_figures, parse_storage
from cetrt.calib.workload import Workload, count_workload
from cetrt.errors import UserError
from cetrt.families import get_family
from cetrt.merging import grouped
from cetrt.plan import MemoryPlan, ModelSizes, Pacing, available_memory, parse_size, plan_from_sizes, spill_crossings
from cetrt.plan_devices import DevicePlan, plan_devices
from cetrt.spec import DEFAULT_WEIGHTS, ModelSpec, Target, dtype_bytes
from cetrt.workload.packing import Batch
from cetrt.workload.shapes import ShapePlan

RUN_TOKENS_PER_BATCH = ShapePlan().tokens_per_batch  # ce-run's default batch size


def layers_per_block(model: ModelSpec, layers_per_engine: int = 1) -> list[int]:
    """Decoder layers in each block: 0 for the embed and the head, then each engine's as `ce-build` merges an
    export of one layer a block (cetrt.merging.grouped, the rule it applies)."""
    exported = [None] + [1] * model.num_layers + [None]
    return [sum(exported[i] or 0 for i in run) for run in grouped(exported, layers_per_engine)]


def weight_block_bytes(model: ModelSpec, dtype: str, layers_per_engine: int = 1) -> list[int]:
    """Bytes of each block's weights, as the planner streams them: embed, one per engine of decoder layers, head
    (the family counts each)."""
    family, width = get_family(model.architecture), dtype_bytes(dtype)
    layers = layers_per_block(model, layers_per_engine)[1:-1]
    return ([family.embed_params(model) * width] + [model.layer_bytes(dtype) * n for n in layers]
            + [family.head_params(model) * width])


@dataclass(frozen=True)
class TimedSchedule:
    """One candidate schedule, timed."""

    tokens_per_batch: int
    plan: MemoryPlan
    flop: float
    flop_per_s: float
    rate_source: str
    compute_s: float
    load_s: float
    io_s: float  # reading and checking every byte the plan reads, hidden or not
    exposed_io_s: float  # the part of it the run waits for
    total_s: float
    device_plan: DevicePlan | None = None  # N devices: the stages, their plans and the bubble (plan is device 0's)
    spill_s: float = 0.0  # the third tier: hidden states written and read back at storage speed, on the critical path

    def summary(self) -> dict:
        return {"tokens_per_batch": self.tokens_per_batch, "predicted_s": round(self.total_s, 2),
                "exposed_io_s": round(self.exposed_io_s, 2), "passes": self.plan.passes,
                "storage_fraction": round(self.exposed_io_s / self.total_s, 4)}


def read_s(size: int, storage: Storage, device: DeviceFigures) -> float:
    """Reading and checking `size` bytes: the checks run on the reader's threads beside the reads."""
    return max(size / storage.bytes_per_s, size / device.verify_bytes_per_s)


def pipeline_s(steps: list[tuple[float, float, float]], depth: int, loads_as_read: bool = False) -> tuple[float, float]:
    """(total, waited on storage) for steps of (read, load, compute), the reader `depth` blocks ahead (0: none).
    A block's load frees its read slot. The executor loads a block when it reaches it, unless `loads_as_read`
    (`MemoryPlan.loads_as_read`: a loader thread loads each block as it arrives); then it waits for the load,
    counted as waiting on storage."""
    loaded: list[float] = []
    reader = consumer = waited = 0.0
    for k, (read_s, load_s, compute_s) in enumerate(steps):
        start = consumer if depth == 0 else max(reader, loaded[k - depth] if k >= depth else 0.0)
        reader = start + read_s
        if loads_as_read:  # loaded as it arrives, in order; the executor waits for the load
            loaded.append(max(reader, loaded[-1] if loaded else 0.0) + load_s)
            taken = computing = max(consumer, loaded[-1])
        else:  # the executor takes the bytes, then loads
            taken = max(consumer, reader)
            loaded.append(taken + load_s)
            computing = loaded[-1]
        waited += taken - consumer
        consumer = computing + compute_s
    return consumer, waited


def executor_load_s(steps: list[tuple[float, float, float]], plan) -> float:
    """The engine loads on the executor's path: none where the plan loads each block as it arrives (the wait for
    a load not yet done is then part of the exposed I/O, as ce-run counts it blocked on storage)."""
    return 0.0 if plan.loads_as_read else sum(s[1] for s in steps)


def run_pacing(model: ModelSpec, device: DeviceFigures, storage: Storage) -> Pacing:
    """Resident chunks as ce-run plans them with a journal on this storage: about JOURNAL_INTERVAL_S each at calib's
    rate through the model, the first covering the reads at the storage's rate; without calib's rate, one chunk
    as large as memory allows."""
    per_layer = device.seconds_per_layer_token
    return Pacing(seconds_per_token=per_layer * model.num_layers if per_layer else None,
                  read_bytes_per_s=storage.bytes_per_s, journal=per_layer is not None)


def time_schedule(model: ModelSpec, dtype: str, batches: list[Batch], tokens_per_batch: int, device: DeviceFigures,
                  storage: Storage, budget_bytes: int, prefetch_depth: int, devices: int = 1) -> TimedSchedule:
    if devices > 1:
        return _time_stages(model, dtype, batches, tokens_per_batch, device, storage, budget_bytes, prefetch_depth,
                            devices)
    merged = device.layers_per_engine  # the engines as ce-build merges them
    blocks, counts = weight_block_bytes(model, dtype, merged), layers_per_block(model, merged)
    plan = plan_from_sizes(ModelSizes(model, dtype, blocks), batches, budget_bytes, None, prefetch_depth,
                           run_pacing(model, device, storage))
    rate, rate_source = device.flop_per_s(tokens_per_batch)
    memory = None if device.measured_on_target else device.memory_bytes_per_s

    def seconds(flop_count: float, weight_bytes: int) -> float:
        return max(flop_count / rate, weight_bytes / memory if memory else 0.0)

    layer_s = [seconds(flop.layer_block_flop(model, 1, b), model.layer_bytes(dtype)) for b in batches]
    per_slot = device.head_s_per_slot(tokens_per_batch)
    head_s = [len(b.rows) * b.slots * per_slot if per_slot is not None else seconds(flop.head_flop(model, b), blocks[-1])
              for b in batches]
    steps, compute_s, spill_s = [], 0.0, 0.0
    hidden_bytes = model.hidden_size * dtype_bytes(dtype)
    for number, chunk in enumerate(plan.chunk_indices(batches)):
        reading = not plan.resident or number == 0
        layer, head = sum(layer_s[i] for i in chunk), sum(head_s[i] for i in chunk)
        spilled = sum(batches[i].shape[0] * batches[i].shape[1] for i in chunk) * hidden_bytes
        one_way = spilled / storage.bytes_per_s if plan.activations == "disk" else 0.0
        for k, size in enumerate(blocks):
            compute = head if k == len(blocks) - 1 else layer * counts[k]
            spill = one_way * spill_crossings(k, len(blocks))
            compute_s, spill_s = compute_s + compute, spill_s + spill
            load = device.load_s_per_block * max(1, counts[k])  # calib binds one layer's weights: per layer
            steps.append((read_s(size, storage, device) if reading else 0.0, load if reading else 0.0, compute + spill))
    total_s, waited_s = pipeline_s(steps, plan.prefetch_depth, plan.loads_as_read)
    return TimedSchedule(
        tokens_per_batch=tokens_per_batch, plan=plan, flop=flop.run_flop(model, batches), flop_per_s=rate,
        rate_source=rate_source, compute_s=compute_s, load_s=executor_load_s(steps, plan),
        io_s=read_s(plan.bytes_to_read, storage, device), exposed_io_s=waited_s,
        total_s=total_s, spill_s=spill_s,
    )


def _time_stages(model: ModelSpec, dtype: str, batches: list[Batch], tokens_per_batch: int, device: DeviceFigures,
                 storage: Storage, budget_bytes: int, prefetch_depth: int, devices: int) -> TimedSchedule:
    """N devices, a pipeline of contiguous stages (cetrt/plan_devices.py): each stage is timed as one device over
    its own blocks (the storage shared: each stage reads at 1/N of it), the slowest sets the pace, and the
    pipeline's fill and drain add N-1 units of its compute: total = slowest stage + its compute x (N-1) / M, so
    the compute part is the slowest stage's / (1 - bubble) and reads are not inflated."""
    blocks = weight_block_bytes(model, dtype)
    plan = plan_devices(ModelSizes(model, dtype, blocks), batches, budget_bytes, devices, None, prefetch_depth)
    shared = Storage(storage.name, storage.bytes_per_s / devices, storage.source)
    timed = []
    for (start, stop), stage_plan in zip(plan.stages, plan.plans):
        stage_model = _StageModel(blocks[start:stop], start == 0, stop == len(blocks))
        timed.append(stage_model.time(model, dtype, batches, device, shared, stage_plan))
    slowest = max(timed, key=lambda t: t[0])
    total = slowest[0] + slowest[2] * (devices - 1) / plan.units  # fill and drain: N-1 more units of its compute
    rate, rate_source = device.flop_per_s(tokens_per_batch)
    return TimedSchedule(
        tokens_per_batch=tokens_per_batch, plan=plan.plans[0], flop=flop.run_flop(model, batches), flop_per_s=rate,
        rate_source=f"{rate_source}; per device, {devices} devices", compute_s=sum(t[2] for t in timed),
        load_s=sum(t[3] for t in timed), io_s=read_s(sum(p.bytes_to_read for p in plan.plans), storage, device),
        exposed_io_s=slowest[1], total_s=total, device_plan=plan,
    )


@dataclass(frozen=True)
class _StageModel:
    blocks: list[int]  # weight bytes of the stage's blocks
    has_embed: bool
    has_head: bool

    def time(self, model, dtype, batches, device, storage, plan) -> tuple[float, float, float, float]:
        """(total, waited on storage, compute, load) of this stage alone, as `time_schedule` times one device."""
        rate, _ = device.flop_per_s(max(b.shape[0] * b.shape[1] for b in batches))
        memory = None if device.measured_on_target else device.memory_bytes_per_s

        def seconds(flop_count: float, weight_bytes: int) -> float:
            return max(flop_count / rate, weight_bytes / memory if memory else 0.0)

        layer_bytes = model.layer_bytes(dtype)
        layer_s = [seconds(flop.layer_block_flop(model, 1, b), layer_bytes) for b in batches]
        head_s = [seconds(flop.head_flop(model, b), self.blocks[-1]) for b in batches]
        steps = []
        for number, chunk in enumerate(plan.chunk_indices(batches)):
            reading = not plan.resident or number == 0
            layer, head = sum(layer_s[i] for i in chunk), sum(head_s[i] for i in chunk)
            for k, size in enumerate(self.blocks):
                embed = self.has_embed and k == 0
                is_head = self.has_head and k == len(self.blocks) - 1
                compute = 0.0 if embed else head if is_head else layer
                steps.append((read_s(size, storage, device) if reading else 0.0,
                              device.load_s_per_block if reading else 0.0, compute))
        total, waited = pipeline_s(steps, plan.prefetch_depth, plan.loads_as_read)
        return total, waited, sum(s[2] for s in steps), executor_load_s(steps, plan)


def best_schedule(model: ModelSpec, dtype: str, work: Workload, device: DeviceFigures, storage: Storage,
                  budget_bytes: int, prefetch_depth: int, devices: int = 1) -> tuple[TimedSchedule, list[TimedSchedule]]:
    """The fastest of the workload's batch sizes that fit the budget (within 1%, the nearest to ce-run's
    default: a constant efficiency cannot see what small batches lose on a GPU), and every one that fits."""
    timed, refused = [], None
    for size, batches in work.batches.items():
        try:
            timed.append(time_schedule(model, dtype, batches, size, device, storage, budget_bytes, prefetch_depth,
                                       devices))
        except UserError as error:  # this batch size does not fit the budget; another may
            refused = error
    if not timed:
        raise refused
    fastest = min(s.total_s for s in timed)
    near = [s for s in timed if s.total_s <= fastest * 1.01]
    return min(near, key=lambda s: abs(math.log(s.tokens_per_batch / RUN_TOKENS_PER_BATCH))), timed


@dataclass(frozen=True)
class Prediction:
    model: str
    model_spec: ModelSpec
    dtype: str
    target: str
    measured_on_target: bool
    storage: Storage
    budget_bytes: int
    work: Workload
    chosen: TimedSchedule
    candidates: list[TimedSchedule]
    floor_s: float
    peak_flops: float
    sources: dict[str, str]
    by_storage: dict[str, dict] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        how = ("from measurements on it (calib.json)" if self.measured_on_target
               else "not measured on it (datasheet figures and stated assumptions)")
        return f"PREDICTION for {self.target}: {how}"

    def to_json(self) -> dict:
        s, plan = self.chosen, self.chosen.plan
        batches = self.work.batches[s.tokens_per_batch]
        return {
            "format": "cetrt-prediction", "version": 1, "headline": self.headline,
            "model": self.model, "model_spec": self.model_spec.to_json(), "dtype": self.dtype,
            "target": self.target, "measured_on_target": self.measured_on_target,
            "storage": {"name": self.storage.name, "bytes_per_s": self.storage.bytes_per_s},
            "tokenizer": self.work.tokenizer, "tokenizer_note": self.work.tokenizer_note,
            "dataset": self.work.dataset, "items": self.work.items,
            "tokens": self.work.tokens(), "padded_tokens": sum(b.shape[0] * b.shape[1] for b in batches),
            "batches": len(batches), "tokens_per_batch": s.tokens_per_batch, "prefetch_depth": plan.prefetch_depth,
            "flop": s.flop, "peak_flop_per_s": self.peak_flops, "flop_per_s": s.flop_per_s,
            "floor_s": self.floor_s, "compute_s": s.compute_s, "load_s": s.load_s, "io_s": s.io_s, "spill_s": s.spill_s,
            "exposed_io_s": s.exposed_io_s, "predicted_s": s.total_s,
            "passes": plan.passes, "chunks": plan.chunks, "chunk_tokens": plan.chunk_tokens,
            "bytes_read": plan.bytes_to_read, "peak_memory_bytes": plan.peak_bytes,
            "working_memory_bytes": plan.slack_bytes, "budget_bytes": self.budget_bytes, "plan": plan.to_json(),
            "candidates": [c.summary() for c in self.candidates], "by_storage": self.by_storage,
            "devices": s.device_plan.to_json() if s.device_plan is not None else None,
            "sources": self.sources,
        }

    def describe(self) -> str:
        s, plan, gib, spec = self.chosen, self.chosen.plan, 2**30, self.model_spec
        batches = self.work.batches[s.tokens_per_batch]
        padded = sum(b.shape[0] * b.shape[1] for b in batches)
        params = sum(weight_block_bytes(spec, "float32")) // 4
        held = ("resident (read once, each loaded as it arrives)" if plan.resident
                else f"streamed, {plan.prefetch_depth} read ahead")
        rows = [
            ("tokens", f"{self.work.tokens():,} ({padded:,} padded)", "tokens"),
            ("FLOP", f"{s.flop:.3g}", "flop"),
            ("floor", f"{_duration(self.floor_s)} at {self.peak_flops / 1e12:.1f} TFLOP/s", "floor"),
            ("compute", f"{_duration(s.compute_s)} at {s.flop_per_s / 1e12:.2f} TFLOP/s "
                        f"({s.flop_per_s / self.peak_flops:.0%} of peak)", "compute"),
            ("batches", f"{len(batches):,} of up to {s.tokens_per_batch:,} tokens", "tokens_per_batch"),
            ("engines", f"{plan.model_bytes / gib:.1f} GiB, {held}", "passes"),
            ("passes", f"{plan.passes} over the weights: {plan.chunks} chunk(s) <= {plan.chunk_tokens:,} tokens",
             "passes"),
            ("read", f"{plan.bytes_to_read / gib:.1f} GiB at {self.storage.bytes_per_s / 1e9:g} GB/s, "
                     f"digest-checked: {_duration(s.io_s)}", "storage"),
            ("exposed I/O", f"{_duration(s.exposed_io_s)} ({s.exposed_io_s / s.total_s:.1%} of the run)", "exposed_io"),
            ("engine load", _duration(s.load_s), "load"),
            ("peak memory", f"{plan.peak_bytes / gib:.2f} of {self.budget_bytes / gib:.2f} GiB budget "
                            f"+ {plan.slack_bytes / gib:.2f} working", "peak_memory"),
            ("TOTAL", _duration(s.total_s), "total"),
        ]
        if s.spill_s:
            rows.insert(-3, ("spilled", f"hidden states to disk and back: {_duration(s.spill_s)}", "storage"))
        if s.device_plan is not None:
            d = s.device_plan
            split = ", ".join(f"{a}-{b - 1}" for a, b in d.stages)
            rows.insert(-1, ("devices", f"{d.devices}: blocks {split}; bubble {d.bubble:.1%}, balance {d.balance:.0%}",
                             "devices"))
        notes = list(dict.fromkeys(self.sources[key] for *_, key in rows))
        lines = [self.headline,
                 f"  model      {self.model}: {spec.architecture}, {spec.num_layers} layers, hidden "
                 f"{spec.hidden_size}, {params / 1e9:.1f}B parameters, {self.dtype}",
                 f"  dataset    {self.work.dataset}, {self.work.items:,} items",
                 f"  tokenizer  {self.work.tokenizer}",
                 f"  storage    {self.storage.name}, {self.storage.bytes_per_s / 1e9:g} GB/s",
                 "",
                 f"  {'term':<12} {'value':<52} source"]
        for term, value, key in rows:
            text = self.sources[key]
            lead = text.split(":")[0] if ":" in text else text
            lines.append(f"  {term:<12} {value:<52} {lead} [{notes.index(text) + 1}]")
        if len(self.candidates) > 1:
            tried = ", ".join(f"{c.tokens_per_batch:,}: {c.total_s:,.0f} s" for c in self.candidates)
            lines.append(f"  tokens per batch tried: {tried}")
        for name, v in self.by_storage.items():
            lines.append(f"  on {name:<12} {v['passes']} pass(es), {_duration(v['predicted_s'])}, "
                         f"{v['storage_fraction']:.1%} of it waiting on storage")
        lines += ["", "  sources:"]
        lines += [textwrap.fill(text, 116, initial_indent=f"  [{n}] ", subsequent_indent="      ")
                  for n, text in enumerate(notes, start=1)]
        lines.append(textwrap.fill(f"Tokens were counted with {self.work.tokenizer}: {self.work.tokenizer_note}.", 116,
                                   initial_indent="  note: ", subsequent_indent="      "))
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.2f} h)"
    if seconds >= 60:
        return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.2f} s"


def predict(model_name: str, model: ModelSpec, dtype: str, work: Workload, device: DeviceFigures, storage: Storage,
            budget_bytes: int, budget_source: str, prefetch_depth: int = 1, devices: int = 1) -> Prediction:
    """The prediction for one storage, with the same schedule choice repeated for each storage preset."""
    chosen, candidates = best_schedule(model, dtype, work, device, storage, budget_bytes, prefetch_depth, devices)
    by_storage = {}
    for other in {**STORAGE_PRESETS, storage.name: storage}.values():
        best = chosen if other == storage else best_schedule(model, dtype, work, device, other, budget_bytes,
                                                             prefetch_depth, devices)[0]
        by_storage[other.name] = {"bytes_per_s": other.bytes_per_s, **best.summary()}
    floor_rate, floor_source = device.floor_rate()
    pick = (f"chosen: the fastest of {len(candidates)} sizes tried (within 1%, the nearest to ce-run's default "
            f"{RUN_TOKENS_PER_BATCH:,})" if len(candidates) > 1 else "stated: --tokens-per-batch or calib.json")
    sources = {
        "tokens": f"counted here: the runner's tokenization, packing and batching, with {work.tokenizer}",
        "flop": "counted here: calib/flop.py over the padded batches (layers: 2 per weight per position + full-row "
                "attention; head at scored slots)",
        "floor": floor_source,
        "compute": chosen.rate_source + ("; the head at its measured time per scored slot" if device.measured_head
                                         else "") + ("" if device.measured_on_target else
                                         "; no batch faster than reading its block's weights from memory at "
                                         f"{(device.memory_bytes_per_s or 0) / 1e9:g} GB/s (datasheet)"),
        "tokens_per_batch": pick,
        "passes": f"runner's planner: cetrt/plan.py plan_from_sizes for a {budget_bytes / 2**30:.2f} GiB budget "
                  f"({budget_source}), one block per decoder layer",
        "storage": storage.source,
        "verify": device.verify_source + "; each read takes max(size / storage, size / this rate)",
        "exposed_io": (f"model: the reader runs {chosen.plan.prefetch_depth} block(s) ahead, so a read hides behind "
                       "the previous block's compute over the chunk; the embed computes nothing, so layer 0's read "
                       "shows in each pass" + ("" if not chosen.plan.resident else
                                               "; resident engines are read in the first pass only, each loaded "
                                               "as it arrives, so reads never wait for compute")),
        "load": device.load_source,
        "peak_memory": "runner's planner: engines and activations held; one batch's working memory on top (estimate)",
        "budget": budget_source,
        "total": "sum: compute + engine load + exposed I/O; fixed costs (process start, tokenization, scoring) "
                 "excluded" + ("" if chosen.device_plan is None else "; over N devices: the slowest stage's total + "
                               "its compute x (N-1)/M (the bubble), the storage shared by the stages"),
        "devices": "cetrt/plan_devices.py: contiguous stages balancing compute per token, the budget per device, "
                   "bubble (N-1)/(M+N-1)",
    }
    return Prediction(model=model_name, model_spec=model, dtype=dtype, target=device.target.name,
                      measured_on_target=device.measured_on_target, storage=storage, budget_bytes=budget_bytes,
                      work=work, chosen=chosen, candidates=candidates, floor_s=chosen.flop / (floor_rate * devices),
                      peak_flops=floor_rate * devices, sources=sources, by_storage=by_storage)


@dataclass(frozen=True)
class PredictOptions:
    model: str  # a preset (calib/presets.py), a config.json, or a model directory
    target: str = "orin-agx-32gb"
    dataset: str | None = None  # default: the reduced set in ../shared if present, else the hub id
    limit: int | None = None
    memory_budget: str | None = None  # a size, "auto" (this machine's free memory), or None: the target's
    storage: str | None = None  # nvme, emmc, sd or GB/s; None: measured in calib.json, else nvme
    calib: Path | None = None
    tokens_per_batch: int | None = None  # None: the fastest of a few (or of those calib.json measured)
    tokenizer: str | None = None  # a tokenizer directory; None: SmolLM2-135M's
    dtype: str | None = None  # None: the target's default
    prefetch_depth: int | None = None  # None: calib.json's schedule, else 1
    weights: str = DEFAULT_WEIGHTS  # the engines' layout: what loading a block costs
    devices: int | None = None  # None: the target's (v100x4: 4); > 1: a pipeline of stages, the budget per device


def predict_run(options: PredictOptions, tokenizer=None) -> Prediction:
    """Resolve the options (cheap checks first, the tokenizer last) and predict; `tokenizer` overrides the option."""
    target = Target.from_name(options.target)
    name, spec = resolve_model(options.model)
    device = device_figures(target, calib_from_option(options.calib), options.weights)
    storage = parse_storage(options.storage) if options.storage else device.measured_storage or STORAGE_PRESETS["nvme"]
    if options.memory_budget is None:
        budget, budget_source = target.memory_bytes, f"target {target.name}'s budget ({target.note})"
    elif options.memory_budget == "auto":
        budget, budget_source = available_memory(), "this machine's free memory (--memory-budget auto)"
    else:
        budget, budget_source = parse_size(options.memory_budget), "stated with --memory-budget"
    sizes = (options.tokens_per_batch,) if options.tokens_per_batch else device.candidates()
    depth = int(options.prefetch_depth or device.schedule.get("prefetch_depth") or 1)
    work = count_workload(options.dataset, options.limit, options.tokenizer, sizes, spec.max_positions, tokenizer)
    devices = options.devices or target.devices
    return predict(name, spec, options.dtype or target.default_dtype, work, device, storage, budget, budget_source,
                   depth, devices)
