"""Each exported block equals its PyTorch module, and the chained modules equal the Hugging Face model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cetrt.export.loading import load_model
from cetrt.families import get_family
from cetrt.formats.blocks import read_blocks
from cetrt.spec import HIDDEN, INPUT_IDS, POSITION_IDS, SCORE_INDEX, SEGMENT_IDS, TARGET_IDS

from tiny_models import ARCHS

B, L, S = 3, 13, 6  # not the export's example shape: the dims must really be dynamic


def block_inputs(spec, hidden_size: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    segments = np.zeros((B, L), dtype=np.int32)
    segments[:, 6:9], segments[:, 9:12], segments[1, 11:] = 1, 2, -1  # context, two endings, padding
    positions = np.tile(np.arange(L), (B, 1))
    positions[:, 9:12] = np.arange(6, 9)  # the second ending restarts after the context
    pool = {
        INPUT_IDS: rng.integers(0, vocab, (B, L)),
        POSITION_IDS: positions.astype(np.int64),
        SEGMENT_IDS: segments,
        HIDDEN: rng.standard_normal((B, L, hidden_size)).astype(np.float32),
        SCORE_INDEX: rng.integers(0, L, (B, S)),
        TARGET_IDS: rng.integers(0, vocab, (B, S)),
    }
    return {name: pool[name] for name in spec.input_names}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_block_onnx_matches_its_torch_module(zoo, arch):
    onnx_dir = zoo.onnx(arch)
    exported = read_blocks(onnx_dir)
    loaded = load_model(str(zoo.model(arch)))
    embed, layers, head = get_family(loaded.spec.architecture).block_modules(loaded.model)
    for block in exported.blocks:
        module = {"embed": embed, "head": head}.get(block.spec.kind) or layers(block.spec.first_layer, block.spec.last_layer)
        feeds = block_inputs(block.spec, loaded.spec.hidden_size, loaded.spec.vocab_size)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(feeds[n]) for n in block.spec.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        session = ort.InferenceSession(str(onnx_dir / block.onnx_file.path), providers=["CPUExecutionProvider"])
        actual = session.run(list(block.spec.output_names), feeds)
        for name, want, got in zip(block.spec.output_names, expected, actual):
            if want.dtype == torch.bool:
                assert np.array_equal(want.numpy(), got), f"{block.spec.name} {name}"
            else:
                err = np.abs(want.numpy() - got).max()
                assert err <= 1e-4, f"{arch} {block.spec.name} {name}: max abs error {err}"


@pytest.mark.parametrize("arch", ARCHS)
def test_chained_blocks_match_hugging_face(zoo, arch):
    """The fused blocks, run one after the other on plain causal sequences, give the HF model's log-probs."""
    loaded = load_model(str(zoo.model(arch)))
    family = get_family(loaded.spec.architecture)
    embed, layers, head = family.block_modules(loaded.model)
    ids = torch.randint(3, loaded.spec.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    feeds = {INPUT_IDS: ids, POSITION_IDS: torch.arange(11).repeat(2, 1),
             SEGMENT_IDS: torch.zeros((2, 11), dtype=torch.int32)}
    positions = feeds[POSITION_IDS]
    with torch.no_grad():
        hidden = embed(*(feeds[name] for name in family.embed_inputs))
        hidden = layers(0, loaded.spec.num_layers)(hidden, *(feeds[name] for name in family.layer_inputs[1:]))
        index, targets = positions[:, :-1], ids[:, 1:]
        ours, greedy = head(hidden, index, targets)
        ref = torch.log_softmax(loaded.model(ids).logits.float(), -1)[:, :-1]
    expected = ref.gather(-1, targets[..., None])[..., 0]
    assert (ours - expected).abs().max().item() <= 1e-4
    assert torch.equal(greedy, ref.argmax(-1) == targets)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_projection_is_its_own_matmul_and_none_is_sliced(zoo, arch):
    """Q, K, V, the output and the MLP's projections are separate MatMuls, two more for attention: 9 per gated
    layer (LLaMA, Phi-3, Qwen2; Phi-3's fused checkpoint Linears split at export), 8 for OPT. A MatMul output
    read by Slice is a fused projection, which ONNX Runtime runs as a Split that copies it."""
    exported = read_blocks(zoo.onnx(arch))
    per_layer = 8 if arch.startswith("opt") else 9
    for block in exported.blocks:
        if block.spec.kind != "layers":
            continue
        graph = onnx.load(str(zoo.onnx(arch) / block.onnx_file.path), load_external_data=False).graph
        matmuls = {node.output[0] for node in graph.node if node.op_type == "MatMul"}
        assert len(matmuls) == per_layer * (block.spec.last_layer - block.spec.first_layer)
        producers = {out: node for node in graph.node for out in node.output}

        def source(name):  # through a bias Add (OPT, Qwen2)
            node = producers.get(name)
            return source(node.input[0]) if node is not None and node.op_type == "Add" else name

        assert not [n.name for n in graph.node if n.op_type == "Slice" and source(n.input[0]) in matmuls]


def test_opset_and_standard_domain_only(zoo):
    exported = read_blocks(zoo.onnx("llama"))
    for block in exported.blocks:
        model = onnx.load(str(zoo.onnx("llama") / block.onnx_file.path))
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        assert max(o.version for o in model.opset_import) == 17
        assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
