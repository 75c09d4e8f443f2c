"""The build stage: blocks.json + ONNX files in, one engine per block + tokenizer + manifest.json out.

Reads only the export directory (checking every ONNX file's sha256 as it goes) and its calib.json, builds each
block with the chosen backend for the chosen target (calib's FP32 islands applied to a copy of the graph),
copies the tokenizer (checking each file's sha256), and writes manifest.json last, so a failed build never
leaves a manifest that describes missing or stale engines. A build whose inputs (export, calib.json, backend and
its version, target, options) are unchanged and whose files verify is skipped (engines whose records hold
sha256 chunk digests, from before issue 12, get xxh3-128 ones recorded instead); a killed build resumes from
build-journal.json (build/resume.py), building only the engines it had not finished. The disk is checked for
the engines' size first; a full disk is one line naming the directory and the bytes.
Usage: `build_engines(BuildOptions(onnx_dir=Path("artifacts/onnx/m"), out_dir=Path("engines/m")))`.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from tqdm import tqdm

from cetrt.backends import get_backend
from cetrt.backends.base import BuildSettings
from cetrt.build.block_types import build_types
from cetrt.build.resume import BuildCache
from cetrt.errors import UserError
from cetrt.files import CHUNK_DIGEST, FileRecord, sha256_file
from cetrt.formats.blocks import BLOCKS_FILE, TOKENIZER_DIR, read_blocks
from cetrt.formats.calib import CALIB_FILE, export_digest, read_calib_for, resolve
from cetrt.formats.manifest import MANIFEST_FILE, EngineBlock, Manifest, read_manifest, write_manifest
from cetrt.islands import named_nodes, save_model, with_fp32_islands
from cetrt.outputs import check_output_dir, full_disk_is_why, writing
from cetrt.reuse import changed, versions
from cetrt.spec import DEFAULT_WEIGHTS, WEIGHTS_LAYOUTS, Target
from cetrt.storage import DEFAULT_REQUEST_BYTES
from cetrt.workload.shapes import ShapePlan


@dataclass(frozen=True)
class BuildOptions:
    onnx_dir: Path
    out_dir: Path
    backend: str = "onnxruntime"
    target: str = "cpu"
    check: bool = False  # parse and build only, for a target whose GPU is not here (engines not runnable)
    shape_plan: ShapePlan | None = None  # None: calib.json's tokens per batch (else the default) up to max_length
    max_length: int = 512
    optimization_level: int = 3
    weights: str = DEFAULT_WEIGHTS  # "inputs": one engine per block type + a weights file per block; "inside"
    layers_per_engine: int | None = None  # layers merged into one engine (None: calib.json's choice, else 1)


def check_target(target: Target, backend: str, check: bool) -> None:
    if check and backend == "tensorrt-rtx":
        return  # the parse-and-build check of any target's blocks, with a real TensorRT builder and no GPU
    if backend not in target.backends:
        raise UserError(f"backend {backend!r} does not build for target {target.name!r}; it takes {list(target.backends)}"
                        + ("; tensorrt-rtx can still --check any target's blocks" if backend == "tensorrt-rtx" else ""))


def with_islands(onnx_dir: Path, block, nodes: list[str], tmp: Path) -> Path:
    """The block's ONNX file as it is to be built: the export's own, or, where calib.json keeps ops of it in FP32,
    a copy with those islands applied, written under `tmp` (the export directory is never rewritten)."""
    path = onnx_dir / block.onnx_file.path
    if not nodes:
        return path
    model = with_fp32_islands(named_nodes(onnx.load(str(path))), set(nodes))
    return save_model(model, tmp / path.name, external=len(block.files) > 1)[0]


def merged_layers(options: BuildOptions, calib) -> int:
    """Layers per engine: as given, else calib.json's choice (weights as inputs only: merging chains weight-free
    graphs; engines with weights inside keep one block each)."""
    chosen = resolve(options.layers_per_engine, calib, "layers_per_engine", 1)
    if options.weights != "inputs":
        if chosen.source == "given" and chosen.value != 1:
            raise UserError(f"--layers-per-engine {chosen.value}: merging layers needs --weights inputs")
        return 1
    return int(chosen.value)


def build_inputs(options: BuildOptions, exported, backend, target: Target, plan: ShapePlan, merged: int) -> dict:
    """What a build depends on: equal inputs and verified files, the build is skipped."""
    calib = Path(options.onnx_dir) / CALIB_FILE
    return {"model_hash": exported.model_hash, "export_digest": export_digest(exported.blocks),
            "tokenizer": [f.sha256 for f in exported.tokenizer_files],
            "blocks_sha256": sha256_file(Path(options.onnx_dir) / BLOCKS_FILE),
            "calib_sha256": sha256_file(calib) if calib.is_file() else None,
            "backend": backend.name, "backend_version": backend.version(), "target": target.name,
            "check": options.check, "weights": options.weights, "shape_plan": plan.to_json(),
            "optimization_level": options.optimization_level, "layers_per_engine": merged,
            "graph_rewrites": backend.rewrites(target), "versions": versions("onnx")}


def reusable_build(out: Path, inputs: dict) -> tuple[Manifest | None, str]:
    """The engines in `out` if they were built from `inputs` and every file verifies; else None and why."""
    if not (out / MANIFEST_FILE).is_file():
        return None, "no engines there yet"
    try:
        manifest = read_manifest(out)
        why = changed(manifest.inputs, inputs)
        if why is not None:
            return None, why
        for record in manifest.all_files:
            record.check_digest(out, None, "")
    except UserError as e:
        return None, f"the engines there do not verify ({e})"
    if any(f.chunks and f.chunk_digest != CHUNK_DIGEST for f in manifest.all_files):
        why = f"unchanged inputs, every file verified, chunk digests now {CHUNK_DIGEST}"
        return _rerecord_chunks(out, manifest), why
    return manifest, "unchanged inputs, every file verified"


def _rerecord_chunks(out: Path, manifest: Manifest) -> Manifest:
    """Engines built before issue 12 (sha256 chunks): their files just verified whole, so their chunk digests are
    recorded again in `CHUNK_DIGEST` rather than the engines rebuilt (hours on the device for TensorRT)."""

    def again(files: tuple[FileRecord, ...]) -> tuple[FileRecord, ...]:
        return tuple(FileRecord.of(out, out / f.path, f.chunk_bytes) if f.chunks else f for f in files)

    manifest = replace(manifest, blocks=tuple(replace(b, files=again(b.files)) for b in manifest.blocks),
                       engine_types=tuple(replace(t, files=again(t.files)) for t in manifest.engine_types))
    write_manifest(out, manifest)
    return manifest


def build_engines(options: BuildOptions, announce=lambda text: None) -> Manifest:
    exported = read_blocks(options.onnx_dir)
    target = Target.from_name(options.target)
    check_target(target, options.backend, options.check)
    backend = get_backend(options.backend)
    digest = export_digest(exported.blocks)
    calib = read_calib_for(options.onnx_dir, exported.model_hash, digest)
    plan = options.shape_plan or ShapePlan(
        tokens_per_batch=resolve(None, calib, "tokens_per_batch", ShapePlan.tokens_per_batch).value,
        max_length=options.max_length)
    settings = BuildSettings(check=options.check, shape_plan=plan, optimization_level=options.optimization_level)
    out = Path(options.out_dir)
    if options.weights not in WEIGHTS_LAYOUTS:
        raise UserError(f"--weights {options.weights!r}: choose one of {list(WEIGHTS_LAYOUTS)}")
    merged = merged_layers(options, calib)
    inputs = build_inputs(options, exported, backend, target, plan, merged)
    existing, why = reusable_build(out, inputs)
    if existing is not None:
        announce(f"build: {out} is up to date ({why}); nothing to build")
        return existing
    announce(f"build: building ({why})")
    needed = 2 * sum(f.bytes for f in exported.all_files) + (16 << 20)  # engines (+ islands copies) at most ~2x
    check_output_dir(out, "the engines", needed=needed, create=True)
    try:
        with writing(out, needed):
            return _build(options, exported, target, backend, calib, plan, settings, inputs, announce)
    except UserError:
        raise
    except Exception as error:  # a backend may report a failed write as its own error: say so if the disk is full
        full_disk_is_why(out, needed, error)
        raise


def _build(options: BuildOptions, exported, target: Target, backend, calib, plan: ShapePlan, settings: BuildSettings,
           inputs: dict, announce) -> Manifest:
    out = Path(options.out_dir)
    digest = inputs["export_digest"]
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    onnx_dir = Path(options.onnx_dir)
    fix = "re-run the export (`make engines` or `ce-export`)"
    for block in exported.blocks:
        for record in block.files:
            record.check_digest(onnx_dir, None, fix)
    cache = BuildCache(out, inputs, announce)
    keep = cache.keep()
    for stale in [*out.glob("block_*"), *out.glob("type_*")]:
        if stale not in keep:
            stale.unlink()  # a layout switch must not leave the other layout's files behind
    progress = functools.partial(tqdm, desc=f"build ({backend.name}, {target.name}, weights {options.weights})",
                                 unit="block")
    engine_types: list = []
    islands = calib.islands() if calib is not None else {}
    with tempfile.TemporaryDirectory(prefix="cetrt-islands-", dir=out) as tmp:
        def graph_of(block) -> Path:
            return with_islands(onnx_dir, block, islands.get(block.spec.index, []), Path(tmp))

        if options.weights == "inputs":
            def build_one(graph_path: Path, name: str, spec):
                return cache.build(name, graph_path, lambda: backend.build(
                    graph_path, out / f"{name}{backend.engine_suffix}", spec, target, settings))

            blocks, engine_types = build_types(exported, graph_of, out, build_one, progress,
                                               inputs["layers_per_engine"])
        else:
            blocks = []
            for block in progress(exported.blocks):
                engine_path = out / f"block_{block.spec.index:03d}{backend.engine_suffix}"
                graph = graph_of(block)
                result = cache.build(engine_path.stem, graph, lambda: backend.build(graph, engine_path, block.spec, target,
                                                                                     settings))
                files = tuple(FileRecord.of(out, f, DEFAULT_REQUEST_BYTES) for f in result.files)
                blocks.append(EngineBlock(spec=block.spec, files=files, build_seconds=result.seconds,
                                          details=result.details))
    tokenizer_out = out / TOKENIZER_DIR
    shutil.rmtree(tokenizer_out, ignore_errors=True)
    for record in exported.tokenizer_files:
        record.check_digest(onnx_dir, None, fix)
        dest = out / record.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_dir / record.path, dest)
    (out / CALIB_FILE).unlink(missing_ok=True)
    calib_file = None
    if calib is not None:  # the calibration of exactly these blocks travels with their engines
        shutil.copyfile(onnx_dir / CALIB_FILE, out / CALIB_FILE)
        calib_file = FileRecord.of(out, out / CALIB_FILE)
        if calib_file.sha256 != inputs["calib_sha256"]:
            raise UserError(f"{onnx_dir / CALIB_FILE}: changed during the build; run the build again")
    manifest = Manifest(
        model_id=exported.model_id,
        model_hash=exported.model_hash,
        model=exported.model,
        dtype=exported.dtype,
        backend=backend.name,
        backend_version=backend.version(),
        target=target,
        tokenizer_files=exported.tokenizer_files,
        blocks=tuple(blocks),
        engine_types=tuple(engine_types),
        build_options={
            "weights": options.weights,
            "layers_per_engine": inputs["layers_per_engine"],
            "fp32_islands": {str(index): nodes for index, nodes in sorted(islands.items())},
            "export_digest": digest,
            "opset": exported.opset,
            "check": options.check,
            **({"shape_plan": plan.to_json(), "optimization_level": options.optimization_level}
               if backend.fixed_shapes else {}),
        },
        calib_file=calib_file,
        inputs=inputs,
    )
    write_manifest(out, manifest)
    cache.finish()
    if cache.reused:
        announce(f"build: {len(cache.reused)} engine(s) of the interrupted build reused after their sha256 verified")
    return manifest
