"""The plan for N devices: the blocks cut into N contiguous stages, one per device, each planned for its budget.

A stage holds (or streams, under its device's budget) only its own blocks' engines; the batches of a chunk flow
stage to stage, so every device computes at once: a pipeline over the batches (`runner/pipeline.py`). The cut
balances compute: a layer block and the head cost their weight bytes (2 FLOP per weight per token, so bytes are
proportional to FLOP per token for a layer), the embed (a gather) costs nothing; the most expensive stage sets the
pace. Each stage is planned by `plan_from_sizes` over its blocks with the per-device budget; the chunk is the
smallest the stages allow, since a chunk passes through all of them. The bubble is the time a device waits while
the pipeline fills and drains: (N-1) / (M + N-1) of the run, M the units that flow without a stop (every batch
of the run when every stage is resident, since a batch goes through a stage's blocks at once and the stages never
wait for a chunk's end; the chunks when a stage streams, since it runs a whole chunk through one block before the
next).
Where the whole model fits one device's budget, splitting the items instead (every device holds the model and
scores its own chunks) would have no bubble: the plan says so; the runner runs the pipeline.
Usage: `plan = plan_devices(ModelSizes(...), batches, budget_bytes=parse_size("30GiB"), devices=4)`; `plan.describe()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cetrt.errors import UserError
from cetrt.plan import MemoryPlan, ModelSizes, plan_from_sizes
from cetrt.workload.packing import Batch


def block_costs(block_bytes: list[int]) -> list[int]:
    """Compute per token of each block, in weight bytes: the embed (block 0) is a gather and costs nothing."""
    return [0] + list(block_bytes[1:])


def split_blocks(costs: list[int], devices: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, one per device, at least one block each, minimising the largest stage's
    cost (exact, by dynamic programming over the cut points); ties go to the earliest cut."""
    n = len(costs)
    if not 1 <= devices <= n:
        raise UserError(f"--devices {devices}: this model has {n} blocks; give 1 to {n} devices")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(devices + 1)]  # best[k][j]: first j blocks on k devices
    cut = [[0] * (n + 1) for _ in range(devices + 1)]
    best[0][0] = 0
    for k in range(1, devices + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    ranges, j = [], n
    for k in range(devices, 0, -1):
        ranges.append((cut[k][j], j))
        j = cut[k][j]
    return ranges[::-1]


def bubble_fraction(devices: int, units: int) -> float:
    """The fraction of the run a device waits while the pipeline fills and drains: (N-1) / (M + N-1)."""
    return (devices - 1) / (units + devices - 1) if devices > 1 else 0.0


@dataclass(frozen=True)
class DevicePlan:
    devices: int
    budget_bytes: int  # per device
    stages: tuple[tuple[int, int], ...]  # [start, stop) block indices per device
    plans: tuple[MemoryPlan, ...]  # one per device, over its stage's blocks, all with the same chunks
    stage_costs: tuple[int, ...]
    units: int  # M: what flows stage to stage without a stop: every batch (all resident), else the chunks
    bubble: float
    model_fits_one_device: bool

    @property
    def chunk_tokens(self) -> int:
        return self.plans[0].chunk_tokens

    @property
    def resident(self) -> bool:
        return all(p.resident for p in self.plans)

    @property
    def balance(self) -> float:
        """The average stage's cost over the largest's: 1.0 is a perfect split."""
        return sum(self.stage_costs) / (len(self.stage_costs) * max(self.stage_costs)) if max(self.stage_costs) else 1.0

    def describe(self) -> str:
        gib = 2**30 if self.budget_bytes >= 2**30 else 2**20
        unit = "GiB" if gib == 2**30 else "MiB"
        rows = [("devices", f"{self.devices}, a pipeline over the batches: contiguous stages, "
                            f"{self.budget_bytes / gib:.2f} {unit} budget each")]
        for k, ((start, stop), plan) in enumerate(zip(self.stages, self.plans)):
            engines = "resident" if plan.resident else f"streamed ({plan.passes} passes)"
            rows.append((f"device {k}", f"blocks {start}-{stop - 1}: {plan.model_bytes / gib:.3f} {unit} of engines, "
                                        f"{engines}, peak {plan.peak_bytes / gib:.3f} {unit} + "
                                        f"{plan.slack_bytes / gib:.3f} working"))
        flow = ("batches (every stage resident: a batch goes through a stage's blocks at once)" if self.resident
                else "chunks (a stage streams: it runs a whole chunk through one block before the next)")
        rows.append(("bubble", f"{self.bubble:.1%} expected: (N-1)/(M+N-1), M = {self.units} {flow}; "
                               f"split balance {self.balance:.0%}"))
        if self.model_fits_one_device:
            rows.append(("items split", "the whole model fits one device's budget: splitting the items over the "
                                        "devices would have no bubble (each device reads the model once); this "
                                        "runner pipelines the blocks"))
        return "\n".join(f"  plan {k:<13} {v}" for k, v in rows)

    def to_json(self) -> dict:
        return {"devices": self.devices, "budget_bytes_per_device": self.budget_bytes,
                "stages": [list(s) for s in self.stages], "plans": [p.to_json() for p in self.plans],
                "stage_costs": list(self.stage_costs), "units": self.units,
                "bubble": round(self.bubble, 4), "model_fits_one_device": self.model_fits_one_device}


def plan_devices(sizes: ModelSizes, batches: list[Batch], budget_bytes: int, devices: int,
                 chunk_tokens: int | None = None, prefetch_depth: int = 1) -> DevicePlan:
    """Split the blocks over `devices` and plan each stage for `budget_bytes` (per device); one chunk size for all."""
    costs = block_costs(sizes.block_bytes)
    stages = split_blocks(costs, devices)

    def stage_plans(cap: int | None) -> list[MemoryPlan]:
        out = []
        for k, (start, stop) in enumerate(stages):
            stage = dataclasses.replace(sizes, block_bytes=sizes.block_bytes[start:stop])
            try:
                out.append(plan_from_sizes(stage, batches, budget_bytes, cap, prefetch_depth))
            except UserError as error:
                raise UserError(f"device {k} (blocks {start}-{stop - 1}): {error}") from None
        return out

    first = stage_plans(chunk_tokens)
    common = min(p.chunk_tokens for p in first)
    plans = stage_plans(common) if any(p.chunk_tokens != common for p in first) else first
    units = len(batches) if all(p.resident for p in plans) else plans[0].chunks
    try:
        fits = plan_from_sizes(sizes, batches, budget_bytes, chunk_tokens, prefetch_depth).resident
    except UserError:
        fits = False
    return DevicePlan(devices=devices, budget_bytes=budget_bytes, stages=tuple(stages), plans=tuple(plans),
                      stage_costs=tuple(sum(costs[s:e]) for s, e in stages), units=units,
                      bubble=bubble_fraction(devices, units),
                      model_fits_one_device=fits)


def stage_chunks(plan: DevicePlan, batches: list[Batch]) -> list[list[int]]:
    """The chunks every stage runs: its stage plans share one chunk size (no first chunk of its own)."""
    return list(plan.plans[0].chunk_indices(batches))
