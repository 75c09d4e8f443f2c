"""The graph ONNX Runtime builds for a GPU (cetrt/backends/ort_fusion.py: attention fused, residual adds fused into
their norms by cetrt/backends/ort_norms.py): the same numbers as the export's graph.

Every family's layer blocks (grouped K/V heads in LLaMA, Phi-3 and Qwen2, biases and no rotary in OPT, OPT's
post-norm variant, two layers a block), weights as inputs as ce-build splits them and weights inside, are
rewritten and run on ORT's CPU provider, which implements MultiHeadAttention and both Skip norms too, on real
packed batches of the dataset: the rewritten graph must give the export's hidden states to FP32 rounding, every
layer's attention and every residual add that feeds a norm must be fused, and the packed mask must still matter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import ARCHS

from cetrt.backends.graph_edit import GraphIndex
from cetrt.backends.onnxruntime import OnnxRuntimeBackend
from cetrt.backends.ort_fusion import MS_DOMAIN, fuse_attention, fuse_for_gpu
from cetrt.backends.ort_norms import fuse_norms
from cetrt.formats.blocks import TOKENIZER_DIR, read_blocks
from cetrt.formats.weights import split_block
from cetrt.spec import HIDDEN, Target
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.packing import make_batches, pack_docs
from cetrt.workload.shapes import ShapePlan
from cetrt.workload.tokens import offline_tokenizer


def _session(model: onnx.ModelProto, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:  # the reference: the export's graph exactly as written
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feeds(export_dir, exported, hellaswag_path) -> list[dict]:
    rows = pack_docs(offline_tokenizer(export_dir / TOKENIZER_DIR), load_docs(str(hellaswag_path), 12))
    batches = make_batches(rows, ShapePlan(tokens_per_batch=512), exported.model.max_positions)
    rng = np.random.default_rng(0)
    feeds = []
    for batch in batches[:2]:
        arrays = batch.arrays()
        arrays[HIDDEN] = rng.standard_normal((*batch.shape, exported.model.hidden_size)).astype(np.float32)
        feeds.append(arrays)
    return feeds


CASES = [(arch, "inputs") for arch in ARCHS] + [("llama", "inside")]


def _residual_norms(arch: str, layers: int) -> int:
    """Residual adds that feed a norm in a block of `layers`: both of each layer's, less the block's last (its
    output), except in a post-norm layer, where each add's sum is normalised at once."""
    return 2 * layers if arch == "opt-postnorm" else 2 * layers - 1


@pytest.mark.parametrize("arch, weights", CASES)
def test_the_gpu_graph_computes_what_the_export_does(zoo, hellaswag_path, arch, weights):
    export_dir = zoo.onnx(arch)
    exported = read_blocks(export_dir)
    feeds = _feeds(export_dir, exported, hellaswag_path)
    for block in (b for b in exported.blocks if b.spec.kind == "layers"):
        path = export_dir / block.onnx_file.path
        if weights == "inputs":  # as ce-build builds by default: the graph without its weights
            split = split_block(path)
            model, bound = split.graph, split.weights
        else:
            model, bound = onnx.load(str(path)), {}
        fused, count = fuse_for_gpu(model)
        layers = block.spec.last_layer - block.spec.first_layer
        assert count == {"attention": layers, "norms": _residual_norms(arch, layers), "argmax": 0}
        ops = [n.op_type for n in fused.graph.node]
        assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops
        skip_norm = "SkipLayerNormalization" if arch.startswith("opt") else "SkipSimplifiedLayerNormalization"
        assert ops.count(skip_norm) == count["norms"]
        assert {n.domain for n in fused.graph.node if n.op_type in ("MultiHeadAttention", skip_norm)} == {MS_DOMAIN}
        onnx.checker.check_model(fused)
        reference, rewritten = _session(model, optimize=False), _session(fused, optimize=True)
        names = [i.name for i in reference.get_inputs()]
        for inputs in feeds:
            feed = {name: {**inputs, **bound}[name] for name in names}
            expected = reference.run(None, feed)[0]
            np.testing.assert_allclose(rewritten.run(None, feed)[0], expected, atol=2e-5, rtol=1e-5)
        unmasked = dict(feed, segment_ids=np.zeros_like(feed["segment_ids"]))  # endings would see each other
        assert np.abs(rewritten.run(None, unmasked)[0] - expected).max() > 1e-3  # the mask reaches the fused node


def test_a_graph_without_the_pattern_is_left_alone(zoo):
    export_dir = zoo.onnx("llama")
    head = next(b for b in read_blocks(export_dir).blocks if b.spec.kind == "head")
    model = onnx.load(str(export_dir / head.onnx_file.path))
    fused, count = fuse_for_gpu(model)
    assert count == {"attention": 0, "norms": 0, "argmax": 0}  # an FP32 head: its ArgMax reads the logits already
    assert fused.SerializeToString() == model.SerializeToString()


def test_a_norm_weight_made_after_the_add_is_kept_and_ordered(zoo, hellaswag_path):
    """The fused node takes the add's place; a norm weight that a node makes later (here an Identity just before
    the norm's scaling) must be moved ahead of it, not dropped."""
    export_dir = zoo.onnx("llama")
    exported = read_blocks(export_dir)
    block = next(b for b in exported.blocks if b.spec.kind == "layers")
    model = onnx.load(str(export_dir / block.onnx_file.path))
    nodes = list(model.graph.node)
    scale = next(i for i, n in enumerate(nodes) if n.op_type == "Mul" and "layers.0.post_norm" in n.input)
    nodes[scale].input[list(nodes[scale].input).index("layers.0.post_norm")] = "post_norm_late"
    nodes.insert(scale, onnx.helper.make_node("Identity", ["layers.0.post_norm"], ["post_norm_late"]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    fused, count = fuse_norms(model)
    assert count == 3
    onnx.checker.check_model(fused)
    reference, rewritten = _session(model, optimize=False), _session(fused, optimize=True)
    feed = {i.name: _feeds(export_dir, exported, hellaswag_path)[0][i.name] for i in reference.get_inputs()}
    np.testing.assert_allclose(rewritten.run(None, feed)[0], reference.run(None, feed)[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_fp16_gpu_graph_rounds_as_the_export_does(zoo, hellaswag_path, arch):
    """In an FP16 model the fused norm adds in FP16 and takes its statistics in FP32, as the export does (OPT's
    LayerNorm weights, which the exporter folded to FP32 constants, are cast back to FP16 without loss), and the
    fused attention computes in FP16 with its softmax in FP32: the build's graph within 2 units in the last place."""
    export_dir = zoo.onnx(arch, "float16")
    exported = read_blocks(export_dir)
    block = next(b for b in exported.blocks if b.spec.kind == "layers")
    split = split_block(export_dir / block.onnx_file.path)
    fused, count = fuse_for_gpu(split.graph)
    assert count == {"attention": 2, "norms": 3, "argmax": 0}
    reference, rewritten = _session(split.graph, optimize=False), _session(fused, optimize=True)
    names = [i.name for i in reference.get_inputs()]
    for inputs in _feeds(export_dir, exported, hellaswag_path):
        inputs[HIDDEN] = inputs[HIDDEN].astype(np.float16)
        feed = {name: {**inputs, **split.weights}[name] for name in names}
        expected = reference.run(None, feed)[0].astype(np.float32)
        got = rewritten.run(None, feed)[0].astype(np.float32)
        assert np.abs(got - expected).max() <= 2e-3 * np.abs(expected).max()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fp16_head_takes_its_argmax_before_the_cast(zoo, hellaswag_path, arch):
    """The head's ArgMax reads the FP16 logits in the GPU graph: the same indices (the cast to FP32 is exact and
    keeps the order, ties included) and the same log-probabilities, the FP32 LogSoftmax untouched."""
    export_dir = zoo.onnx(arch, "float16")
    exported = read_blocks(export_dir)
    head = next(b for b in exported.blocks if b.spec.kind == "head")
    model = onnx.load(str(export_dir / head.onnx_file.path))
    fused, count = fuse_for_gpu(model)
    assert count == {"attention": 0, "norms": 0, "argmax": 1}
    g = GraphIndex(fused)
    argmax = next(n for n in fused.graph.node if n.op_type == "ArgMax")
    assert g.types[argmax.input[0]] == onnx.TensorProto.FLOAT16
    softmax = next(n for n in fused.graph.node if n.op_type == "LogSoftmax")
    assert g.types[softmax.input[0]] == onnx.TensorProto.FLOAT
    for graph in (model, fused):  # the indices themselves, not only the greedy flags they make
        graph.graph.output.append(onnx.helper.make_tensor_value_info(argmax.output[0], onnx.TensorProto.INT64, None))
    reference, rewritten = _session(model, optimize=False), _session(fused, optimize=True)
    names = [i.name for i in reference.get_inputs()]
    for inputs in _feeds(export_dir, exported, hellaswag_path):
        inputs[HIDDEN] = inputs[HIDDEN].astype(np.float16)
        feed = {name: inputs[name] for name in names}
        expected, got = reference.run(None, feed), rewritten.run(None, feed)
        np.testing.assert_array_equal(got[2], expected[2])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_anchored_fp16_head_keeps_the_fp32_scores_within_its_one_rounding(zoo, hellaswag_path, arch, monkeypatch):
    """CETRT_HEAD_ANCHORED=1: no FP32 copy of the logits left, the same greedy flags, and each target's
    log-probability within an FP16 step at log(vocab) of the FP32 head's (the one rounding: of the argmax's
    log-probability, at most log(vocab) nats)."""
    monkeypatch.setenv("CETRT_HEAD_ANCHORED", "1")
    export_dir = zoo.onnx(arch, "float16")
    exported = read_blocks(export_dir)
    head = next(b for b in exported.blocks if b.spec.kind == "head")
    model = onnx.load(str(export_dir / head.onnx_file.path))
    fused, count = fuse_for_gpu(model)
    assert count == {"attention": 0, "norms": 0, "argmax": 1, "anchored": 1}
    g = GraphIndex(fused)
    assert [g.types[n.input[0]] for n in fused.graph.node if n.op_type == "LogSoftmax"] == [onnx.TensorProto.FLOAT16]
    assert [n.op_type for n in fused.graph.node].count("ArgMax") == 1  # the greedy flag's, read once for both
    vocab = exported.model.vocab_size
    assert not [n for n in fused.graph.node if n.op_type == "Cast" and g.types[n.output[0]] == onnx.TensorProto.FLOAT
                and (g.shapes[n.output[0]] or [None])[-1] == vocab]  # no FP32 copy of the logits
    bound = float(np.spacing(np.float16(np.log(vocab)))) + 1e-5  # one step: ORT's CPU kernel rounds twice
    # both as written: ORT's CPU optimizer may keep an FP16 MatMul's output in FP32 for some readers
    reference, rewritten = _session(model, optimize=False), _session(fused, optimize=False)
    names = [i.name for i in reference.get_inputs()]
    for inputs in _feeds(export_dir, exported, hellaswag_path):
        inputs[HIDDEN] = (inputs[HIDDEN] * 4).astype(np.float16)  # spread logits: log-probabilities of many nats
        feed = {name: inputs[name] for name in names}
        expected, got = reference.run(None, feed), rewritten.run(None, feed)
        np.testing.assert_array_equal(got[1], expected[1])
        error = np.abs(got[0] - expected[0])
        assert error.max() <= bound
        assert error.max() > 0  # FP16 did round: the rewrite ran the anchored form, not the FP32 one


def test_only_gpu_builds_fuse(zoo):
    export_dir = zoo.onnx("opt")
    layers = next(b for b in read_blocks(export_dir).blocks if b.spec.kind == "layers")
    model = onnx.load(str(export_dir / layers.onnx_file.path))
    backend = OnnxRuntimeBackend()
    assert backend.graph_for(model, Target.from_name("cpu")) is model
    on_gpu = backend.graph_for(model, Target.from_name("cuda"))
    assert "MultiHeadAttention" in {n.op_type for n in on_gpu.graph.node}


def test_the_rewrite_is_a_build_input(zoo, tmp_path, monkeypatch):
    """Engines built before the fusion changed, or with the head's form switched, are built again, not reused:
    the build's inputs name it."""
    from cetrt.backends.ort_fusion import FUSION
    from cetrt.build.engines import BuildOptions, build_engines

    backend = OnnxRuntimeBackend()
    assert backend.rewrites(Target.from_name("cuda")) == FUSION and backend.rewrites(Target.from_name("cpu")) is None
    monkeypatch.setenv("CETRT_HEAD_ANCHORED", "1")
    assert backend.rewrites(Target.from_name("cuda")) not in (FUSION, None)
    monkeypatch.delenv("CETRT_HEAD_ANCHORED")
    built = build_engines(BuildOptions(onnx_dir=zoo.onnx("llama"), out_dir=tmp_path / "engines"))
    assert "graph_rewrites" in built.inputs and built.inputs["graph_rewrites"] is None  # a CPU build: none
