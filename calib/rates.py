"""The rates a prediction runs on, each with where it comes from: storage, compute, memory, engine load.

A rate is measured (calib.json's "measured" section, taken on the target itself), a datasheet figure (the
`Target` record), or a stated assumption (the storage presets below, the target's default efficiency). A
measurement taken on another target is not used for this one's compute.
Usage: `storage = parse_storage("sd")`; `device = device_figures(Target.from_name("orin-agx-32gb"), calib_from_option(p))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError
from cetrt.files import CHUNK_DIGEST, LEGACY_CHUNK_DIGEST
from cetrt.formats.calib import CalibRecord, load_calib_file
from cetrt.spec import DEFAULT_WEIGHTS, TARGETS, Target


@dataclass(frozen=True)
class Storage:
    name: str
    bytes_per_s: float
    source: str


STORAGE_PRESETS: dict[str, Storage] = {s.name: s for s in (
    Storage("nvme", 3.0e9, "assumption: an NVMe SSD in the Orin AGX dev kit's M.2 Key M slot (PCIe Gen4 x4, a "
                           "7.9 GB/s link); DESIGN.md plans 3-6 GB/s with O_DIRECT: the low end taken (the GPU "
                           "machine's disk measured about 1.3 GB/s O_DIRECT: --storage 1.3 models that)"),
    Storage("emmc", 0.25e9, "assumption: the Orin AGX dev kit's 64 GB eMMC 5.1 (HS400 bus, 400 MB/s); sequential "
                            "reads of such parts run 0.25-0.3 GB/s: the low end taken"),
    Storage("sd", 0.09e9, "assumption: a UHS-I microSD card (SDR104 bus, 104 MB/s); good cards read about 90 MB/s"),
)}


def parse_storage(text: str) -> Storage:
    """'nvme', 'emmc', 'sd', or a read bandwidth in GB/s ('2.5', '2.5GB/s')."""
    key = text.strip().lower()
    if key in STORAGE_PRESETS:
        return STORAGE_PRESETS[key]
    number = key.removesuffix("gb/s").strip()
    try:
        gb_per_s = float(number)
    except ValueError:
        gb_per_s = math.nan
    if not (math.isfinite(gb_per_s) and gb_per_s > 0):
        raise UserError(f"--storage {text!r}: give one of {', '.join(STORAGE_PRESETS)}, or a read bandwidth in GB/s "
                        "such as 2.5")
    return Storage("stated", gb_per_s * 1e9, f"stated with --storage: {gb_per_s:g} GB/s")


def calib_from_option(path: Path | None) -> CalibRecord | None:
    """`--calib`: calib.json by path (None when no path is given), through its one reader."""
    return None if path is None else load_calib_file(Path(path))


# The runner checks each chunk's digest (CHUNK_DIGEST, xxh3-128) on the reader's request threads as it reads.
# Where calib.json has no rate for that digest:
ASSUMED_VERIFY_BYTES_PER_S = 8.0e9
ASSUMED_VERIFY_SOURCE = (
    "assumption: xxh3-128 at 2 GB/s per core on the reader's 4 request threads (measured 5.6 GB/s on one core of "
    "the 2-core AMD EPYC dev machine, 4.5x its sha256; the Orin's Cortex-A78AE runs it with NEON at 2.2 GHz: not "
    "measured, taken well below the x86 rate)")


@dataclass(frozen=True)
class DeviceFigures:
    """What a target computes with: measured rates where calib.json has them for it, else its datasheet."""

    target: Target
    peak_flops: float | None
    peak_source: str
    measured_rates: tuple[tuple[int, float], ...]  # (tokens per batch, FLOP/s) measured on this target
    measured_head: tuple[tuple[int, float], ...]  # (tokens per batch, head seconds per scored slot), if measured
    efficiency: float | None
    efficiency_source: str
    memory_bytes_per_s: float | None
    load_s_per_block: float
    load_source: str
    measured_storage: Storage | None
    verify_bytes_per_s: float  # the runner's chunk digest check of every read, on the reader's request threads
    verify_source: str
    schedule: dict  # calib.json's chosen schedule (tokens_per_batch, prefetch_depth), or {}
    seconds_per_layer_token: float | None = None  # calib's, from which ce-run sizes its journaled resident chunks
    layers_per_engine: int = 1  # calib's choice for this target, as ce-build merges by default (rates count it)
    rates_sustained: bool = False  # the measured rates are at sustained clocks (calib's sustained pass)

    @property
    def measured_on_target(self) -> bool:
        return bool(self.measured_rates)

    def candidates(self) -> tuple[int, ...]:
        """Tokens per batch worth trying: those measured on the target, else a few sizes."""
        return tuple(t for t, _ in self.measured_rates) or (1024, 2048, 4096, 8192)

    def flop_per_s(self, tokens_per_batch: int) -> tuple[float, str]:
        """The whole-run compute rate at this batch size, and its source."""
        if self.measured_rates:
            nearest, rate = min(self.measured_rates, key=lambda m: abs(math.log(m[0] / tokens_per_batch)))
            at = f"{nearest:,}" if nearest == tokens_per_batch else f"{nearest:,} (nearest to {tokens_per_batch:,})"
            clocks = ", batches back to back at sustained clocks" if self.rates_sustained else ""
            return rate, f"calib.json: measured on {self.target.name} at {at} tokens per batch{clocks}"
        assert self.peak_flops is not None and self.efficiency is not None
        return self.peak_flops * self.efficiency, self.efficiency_source

    def head_s_per_slot(self, tokens_per_batch: int) -> float | None:
        """The head's measured time per scored slot at the nearest batch size, or None (then FLOP decide)."""
        if not self.measured_head:
            return None
        return min(self.measured_head, key=lambda m: abs(math.log(m[0] / tokens_per_batch)))[1]

    def floor_rate(self) -> tuple[float, str]:
        """The rate of the FLOP floor: the datasheet peak, or the best measured rate where there is none."""
        if self.peak_flops is not None:
            return self.peak_flops, self.peak_source
        best = max(rate for _, rate in self.measured_rates)
        return best, "no datasheet peak for this target: the best rate measured on it (calib.json)"


def sustained_rate(row: dict) -> float:
    """A size's measured rate at the clocks a long run holds: its steady rate scaled by the sustained pass's time
    where calib.json has one (a GPU, since 2026-12-04's second session; calib/schedule.py `_sustained_pass`)."""
    rate = float(row["flop_per_s"])
    sustained = row.get("s_per_token_sustained")
    return rate * float(row["s_per_token"]) / float(sustained) if sustained else rate


def merged_rate(row: dict, merge: dict | None, layers_per_engine: int) -> float:
    """A measured rate (one layer block a call) as engines of `layers_per_engine` layers compute: each call's
    fixed cost (calib's merge measurement) is paid once per engine instead of once per layer block."""
    rate = sustained_rate(row)
    if not merge or layers_per_engine <= merge["layers_per_block"]:
        return rate
    call_s = float(row["s_per_token"]) * int(row["tokens_per_batch"])
    saved = merge["call_s"] * (1 - merge["layers_per_block"] / layers_per_engine)
    # a call cost measured larger than half a call at this size is not a fixed cost: merging gains at most 2x
    return rate * call_s / max(call_s - saved, call_s / 2)


def device_figures(target: Target, calib: CalibRecord | None, weights: str = DEFAULT_WEIGHTS) -> DeviceFigures:
    """`weights` is the engines' layout: its per-block load is a session (inside) or a weights bind (inputs)."""
    measured = calib.measured if calib is not None else {}
    on_target = measured.get("target") == target.name
    merged = int((calib.schedule.get("layers_per_engine") or 1) if calib is not None and on_target else 1)
    rates = tuple(sorted((int(c["tokens_per_batch"]), merged_rate(c, measured.get("merge"), merged))
                         for c in measured.get("compute", []) if c.get("flop_per_s"))) if on_target else ()
    if not rates and target.peak_fp16_flops is None:
        elsewhere = f" (the calib.json given was measured on {measured.get('target')!r})" if measured else ""
        raise UserError(f"target {target.name!r} has no datasheet compute figure{elsewhere}: run the calibration on "
                        f"that machine and pass its calib.json with --calib, or predict for one of "
                        f"{', '.join(n for n, t in TARGETS.items() if t.peak_fp16_flops)}")
    storage = None
    if on_target and (measured.get("storage") or {}).get("bytes_per_s"):
        direct = "O_DIRECT" if measured["storage"].get("direct_io") else "through the page cache"
        bytes_per_s = float(measured["storage"]["bytes_per_s"])
        storage = Storage("measured", bytes_per_s,
                          f"calib.json: read bandwidth measured on {target.name} ({direct})")
    verify = (measured.get("storage") or {}).get("verify_bytes_per_s") if on_target else None
    # a calib.json from before issue 12 measured sha256 (no "verify_digest"): not the digest the reader checks now
    verify_digest = (measured.get("storage") or {}).get("verify_digest", LEGACY_CHUNK_DIGEST)
    verify = verify if verify_digest == CHUNK_DIGEST else None
    load_key = "bind_s_per_block" if weights == "inputs" else "load_s_per_block"
    load = measured.get(load_key) if on_target else None
    return DeviceFigures(
        target=target,
        peak_flops=target.peak_fp16_flops,
        peak_source=target.peak_source,
        measured_rates=rates,
        measured_head=tuple(sorted((int(c["tokens_per_batch"]), float(c["head_s_per_slot"]))
                                   for c in measured.get("compute", []) if c.get("head_s_per_slot"))) if on_target else (),
        efficiency=target.default_efficiency,
        efficiency_source=target.efficiency_source,
        memory_bytes_per_s=target.memory_bandwidth_bytes_per_s,
        load_s_per_block=float(load) if load is not None else 0.0,
        load_source=(f"calib.json: {load_key} measured on {target.name} (weights {weights}), per block of the model "
                     "it calibrated" if load is not None
                     else "not modelled: no calib.json measured on this target, so 0; on the H100 a 7B block took "
                          "0.07 s to bind (weights as inputs) and 1.04 s to load as its own ORT CUDA session (weights "
                          "inside; bench/results/gpu_h100_llama7b_two_ways_stream.json)"),
        measured_storage=storage,
        verify_bytes_per_s=float(verify) if verify else ASSUMED_VERIFY_BYTES_PER_S,
        verify_source=(f"calib.json: {CHUNK_DIGEST} rate measured on {target.name}" if verify
                       else ASSUMED_VERIFY_SOURCE),
        schedule=dict(calib.schedule) if calib is not None and on_target else {},
        seconds_per_layer_token=calib.seconds_per_layer_token() if calib is not None and on_target else None,
        layers_per_engine=merged,
        rates_sustained=bool(rates) and all(c.get("s_per_token_sustained") for c in measured.get("compute", [])
                                            if c.get("flop_per_s")),
    )

