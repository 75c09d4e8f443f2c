"""The calibration stage: an export directory in, calib.json out beside blocks.json (the export left as it is).

Between export and build (DESIGN.md): the precision check (which FP32 islands the build must apply), the
measurements and the schedule; calib.json last, tied to that export.
Where this machine cannot run the target's device (no ONNX Runtime provider for it, say on a Jetson without
onnxruntime-gpu), calib.json says so and the schedule stays at the defaults rather than stopping the build.
A calib.json made for the same export, target, dataset, options and versions is reused, not measured again;
one of another export or target is replaced.
Usage: `calibrate(CalibOptions(onnx_dir=Path("artifacts/onnx/m"), target="cpu"))`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from cetrt.calib.precision import DEFAULT_ITEMS, check_precision
from cetrt.calib.schedule import choose_schedule, measure
from cetrt.errors import UserError
from cetrt.formats.blocks import read_blocks
from cetrt.formats.calib import CALIB_FILE, CalibRecord, export_digest, load_calib_file, write_calib
from cetrt.reuse import changed, versions
from cetrt.spec import Target
from cetrt.workload.hellaswag import default_dataset


@dataclass(frozen=True)
class CalibOptions:
    onnx_dir: Path
    target: str = "cpu"
    dataset: str | None = None  # None: the one default (cetrt.workload.hellaswag.default_dataset)
    precision_items: int = DEFAULT_ITEMS
    schedule_items: int = 400
    progress: bool = True


def calib_inputs(exported, target: Target, dataset: str, options: CalibOptions) -> dict:
    path = Path(dataset)
    return {"export_digest": export_digest(exported.blocks), "target": target.name, "dataset": str(dataset),
            "dataset_bytes": path.stat().st_size if path.is_file() else None,
            "precision_items": options.precision_items, "schedule_items": options.schedule_items,
            "versions": versions("onnxruntime", "torch")}


def reusable_calib(onnx_dir: Path, inputs: dict) -> tuple[CalibRecord | None, str]:
    path = onnx_dir / CALIB_FILE
    if not path.is_file():
        return None, "no calib.json yet"
    try:
        record = load_calib_file(path)
    except UserError as e:
        return None, f"the calib.json there cannot be used ({e})"
    why = changed(record.inputs, inputs)
    return (record, "unchanged inputs") if why is None else (None, why)


def calibrate(options: CalibOptions, announce=lambda text: None) -> CalibRecord:
    onnx_dir = Path(options.onnx_dir)
    target = Target.from_name(options.target)
    exported = read_blocks(onnx_dir)
    dataset = options.dataset or default_dataset()
    options = dataclasses.replace(options, dataset=dataset)
    inputs = calib_inputs(exported, target, dataset, options)
    existing, why = reusable_calib(onnx_dir, inputs)
    if existing is not None:
        announce(f"calib: {onnx_dir / CALIB_FILE} is up to date ({why}); nothing to measure")
        return existing
    announce(f"calib: calibrating ({why})")
    start = time.perf_counter()
    if options.precision_items:
        announce(f"calib: precision check of {onnx_dir} on {options.precision_items} items")
        precision = check_precision(onnx_dir, options.dataset, items=options.precision_items, progress=options.progress)
    else:
        precision = {"items": 0, "blocks": [], "islands": [], "note": "not checked: asked for 0 items"}
    precision_s = time.perf_counter() - start
    largest = max(sum(f.bytes for f in b.files) for b in exported.blocks)
    try:
        measured = measure(onnx_dir, exported, target, options.dataset, items=options.schedule_items,
                           progress=lambda step: announce(f"calib: measuring {step}"))
        schedule = choose_schedule(measured, largest, exported.model.num_layers)
    except UserError as error:  # e.g. no ONNX Runtime provider for the target's device on this machine
        announce(f"calib: not measured here ({error}); the schedule stays at the defaults")
        measured = {"target": target.name, "skipped": str(error)}
        schedule = {"note": f"defaults: nothing measured ({error})"}
    record = CalibRecord.for_export(
        exported, options.dataset, precision, measured, schedule,
        seconds={"precision": round(precision_s, 2), "total": round(time.perf_counter() - start, 2)},
        inputs=inputs,
    )
    write_calib(onnx_dir, record)
    return record
