"""TensorRT path on a CPU machine: every block parses and builds with TensorRT-RTX's real parser and builder.

What runs here: parsing, building, optimization profiles, the layer report, the manifest, and every refusal.
What cannot: executing an engine (no full TensorRT anywhere here; TensorRT-RTX's runtime needs a GPU of
compute capability 8.0/8.6/8.9/12.x). The runtime's API use is checked against tensorrt_rtx by name.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path

import onnx
import pytest
import tensorrt_rtx

from cetrt.backends.base import EngineSource
from cetrt.backends.tensorrt import RTX_STAND_IN
from cetrt.backends.tensorrt_runtime import TensorRTSession
from cetrt.build.engines import BuildOptions, build_engines
from cetrt.errors import UserError
from cetrt.files import FileRecord
from cetrt.formats.blocks import read_blocks, write_blocks
from cetrt.formats.manifest import MANIFEST_FILE, read_manifest
from cetrt.gpu import Gpu
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.spec import Target
from cetrt.workload.shapes import ShapePlan

ROOT = Path(__file__).resolve().parents[2]
PLAN = ShapePlan(tokens_per_batch=2048, max_length=384)
# TensorRT-RTX runs a decoder layer as 6 matrix products and about 14 generated kernels (README).
MAX_KERNELS_PER_DECODER_LAYER = 24
FAMILIES = ("llama", "opt", "phi3", "qwen2")  # one tiny model of each (tests/tiny_models.py)


@pytest.fixture(scope="module")
def rtx_engines(zoo, tmp_path_factory):
    out = {}
    for arch in FAMILIES:
        engines = tmp_path_factory.mktemp(f"rtx-{arch}")
        build_engines(BuildOptions(onnx_dir=zoo.onnx(arch, "float16"), out_dir=engines, backend="tensorrt-rtx", weights="inside",
                                   target="orin-agx-32gb", check=True, shape_plan=PLAN))
        out[arch] = engines
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_block_parses_and_builds(rtx_engines, arch):
    manifest = read_manifest(rtx_engines[arch])
    assert manifest.backend == "tensorrt-rtx" and manifest.backend_version == tensorrt_rtx.__version__
    assert manifest.target.name == "orin-agx-32gb" and manifest.build_options["check"] is True
    assert manifest.build_options["shape_plan"]["max_length"] == 384
    assert [b.spec.kind for b in manifest.blocks] == ["embed", "layers", "layers", "head"]
    for block in manifest.blocks:
        assert block.files[0].path.endswith(".engine") and block.files[0].bytes > 10_000
        details = block.details
        assert details["compute_capability"] == RTX_STAND_IN and details["check_only"]
        assert len(details["profiles"]) == len(PLAN.profiles()) == 3
        assert details["num_layers"] > 0


@pytest.mark.parametrize("arch", FAMILIES)
def test_layer_report_shows_attention_and_mlp_fused(rtx_engines, zoo, arch):
    """Per profile and decoder layer: the graph's 6 matrix products become at most 6 kernels (TensorRT merges
    some for OPT), and everything else fuses into a few generated kernels."""
    manifest = read_manifest(rtx_engines[arch])
    block = next(b for b in manifest.blocks if b.spec.kind == "layers" and b.spec.last_layer - b.spec.first_layer == 2)
    layers = json.loads((rtx_engines[arch] / block.details["layer_report"]).read_text())["layers"]
    profiles = len(PLAN.profiles())
    decoder_layers = 2 * profiles
    compute = [l for l in layers if l["type"] not in ("signal", "wait", "shape_call")]
    products = [l for l in compute if l["type"] == "gemm" or (l["type"] == "runtime_fusion" and "Fc" in l["name"])]
    assert 3 * decoder_layers <= len(products) <= 6 * decoder_layers, sorted(l["name"] for l in products)
    assert len(compute) <= MAX_KERNELS_PER_DECODER_LAYER * decoder_layers
    onnx_nodes = len(onnx.load(str(zoo.onnx(arch, "float16") / f"block_{block.spec.index:03d}.onnx")).graph.node)
    assert len(compute) / profiles < onnx_nodes / 2


def test_build_for_a_gpu_that_is_not_here_is_refused_without_check(zoo, tmp_path):
    with pytest.raises(UserError, match="needs its GPU, and this machine has none"):
        build_engines(BuildOptions(onnx_dir=zoo.onnx("llama", "float16"), out_dir=tmp_path, backend="tensorrt-rtx", weights="inside",
                                   target="rtx", shape_plan=PLAN))
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_a_block_the_parser_rejects_names_the_file(tmp_path, zoo):
    export = tmp_path / "onnx"
    shutil.copytree(zoo.onnx("llama", "float16"), export)
    exported = read_blocks(export)
    model = onnx.load(str(export / "block_000.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, str(export / "block_000.onnx"))
    first = dataclasses.replace(exported.blocks[0], files=(FileRecord.of(export, export / "block_000.onnx"),))
    write_blocks(export, dataclasses.replace(exported, blocks=(first, *exported.blocks[1:])))
    with pytest.raises(UserError, match="block_000.onnx: the tensorrt-rtx ONNX parser rejected this block"):
        build_engines(BuildOptions(onnx_dir=export, out_dir=tmp_path / "e", backend="tensorrt-rtx", weights="inside",
                                   target="orin-agx-32gb", check=True, shape_plan=PLAN))


def test_check_only_engines_are_refused_by_the_runner(rtx_engines, hellaswag_path):
    with pytest.raises(UserError, match="built with --check"):
        evaluate(RunOptions(engines=rtx_engines["llama"], dataset=str(hellaswag_path), limit=2, progress=False))


def test_engines_from_another_tensorrt_version_are_refused(rtx_engines, hellaswag_path, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(rtx_engines["llama"], engines)
    data = json.loads((engines / MANIFEST_FILE).read_text())
    data["backend"]["version"], data["build_options"]["check"] = "1.0.0.1", False
    (engines / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"tensorrt-rtx 1\.0\.0\.1, but {tensorrt_rtx.__version__} is installed"):
        evaluate(RunOptions(engines=engines, dataset=str(hellaswag_path), limit=2, progress=False))


def test_engines_for_another_gpu_are_refused(rtx_engines, monkeypatch):
    manifest = read_manifest(rtx_engines["llama"])
    source = EngineSource(path=rtx_engines["llama"] / manifest.blocks[0].files[0].path)
    monkeypatch.setattr("cetrt.backends.tensorrt_runtime.current_gpu", lambda: Gpu("NVIDIA H100", "9.0", 80 << 30))
    with pytest.raises(UserError, match=r"built for orin-agx-32gb \(compute capability 8\.7\), but this GPU is NVIDIA H100 \(9\.0\)"):
        TensorRTSession(tensorrt_rtx, "tensorrt-rtx", source, manifest.target)
    monkeypatch.setattr("cetrt.backends.tensorrt_runtime.current_gpu", lambda: None)
    with pytest.raises(UserError, match="this machine has none"):
        TensorRTSession(tensorrt_rtx, "tensorrt-rtx", source, manifest.target)


def test_an_engine_tensorrt_cannot_load_gets_one_clear_error(tmp_path, monkeypatch):
    """Deserialization returning None (corrupt bytes; here also: no GPU) becomes a message, not a crash later."""
    target = Target.from_name("rtx")
    monkeypatch.setattr("cetrt.backends.tensorrt_runtime.current_gpu", lambda: Gpu("RTX", target.compute_capability, 24 << 30))
    bad = tmp_path / "block_001.engine"
    bad.write_bytes(b"not an engine" * 100)
    with pytest.raises(UserError, match=r"block_001\.engine: tensorrt-rtx .* cannot load this engine"):
        TensorRTSession(tensorrt_rtx, "tensorrt-rtx", EngineSource(path=bad), target)


# The runtime's TensorRT calls, by the names they use, against tensorrt_rtx's classes.
RECEIVERS = {
    "trt": tensorrt_rtx, "runtime": tensorrt_rtx.Runtime, "engine": tensorrt_rtx.ICudaEngine,
    "context": tensorrt_rtx.IExecutionContext, "builder": tensorrt_rtx.Builder, "config": tensorrt_rtx.IBuilderConfig,
    "parser": tensorrt_rtx.OnnxParser, "profile": tensorrt_rtx.IOptimizationProfile, "inspector": tensorrt_rtx.EngineInspector,
    "network": tensorrt_rtx.INetworkDefinition, "cache": tensorrt_rtx.ITimingCache,
}


def attribute_chains(path: Path) -> set[tuple[str, ...]]:
    """Every `receiver.attr[.attr...]` in a module whose receiver is a name in RECEIVERS (or self.<name>)."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        parts, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id == "self" and parts and parts[-1] in RECEIVERS:
            parts, value = parts[:-1], ast.Name(id=parts[-1])
        if isinstance(value, ast.Name) and value.id in RECEIVERS and parts:
            chains.add((value.id, *reversed(parts)))
    return chains


# Full-TensorRT names that tensorrt_rtx lacks, each used only behind a `Features` check (tensorrt_features.py).
FULL_TENSORRT_ONLY = {("engine", "device_memory_size")}  # before 10.1 (no device_memory_size_v2); gone in 11.x


@pytest.mark.parametrize("module, least", [("tensorrt.py", 10), ("tensorrt_runtime.py", 10),
                                           ("tensorrt_timing_cache.py", 3)])
def test_every_tensorrt_name_the_backend_uses_exists_in_tensorrt_rtx(module, least):
    chains = attribute_chains(ROOT / "cetrt" / "backends" / module)
    assert len(chains) > least
    missing = []
    for receiver, *names in chains - FULL_TENSORRT_ONLY:
        obj = RECEIVERS[receiver]
        for name in names:
            if not hasattr(obj, name):
                missing.append(".".join([receiver, *names]))
                break
            obj = getattr(obj, name)
    assert missing == []
