"""Layer blocks written from one shared trace are the files a trace of each block writes, byte for byte.

Each family's tiny model is exported twice, one layer a block: as `ce-export` does it (the first and last layer
blocks traced, the others written from the first block's graph with their own weights) and with every block
traced; the two directories must be identical and the first must have traced fewer blocks. Where an initializer
cannot be traced back to one parameter (equal values), every block is traced.
"""

from __future__ import annotations

import filecmp

import numpy as np
import onnxruntime as ort
import pytest
import torch

import cetrt.export.shared_graph as shared_graph
from cetrt.export.onnx_export import trace_block
from cetrt.export.pipeline import ExportOptions, export_model
from cetrt.spec import HIDDEN, HIDDEN_OUT, BlockSpec, TensorSpec

from tiny_models import make_tiny_model, tiny_config


def _export(model, out, monkeypatch, shared: bool) -> int:
    """Export one layer a block; how many blocks were traced. `shared=False`: every block traced, the way before
    (CETRT_SHARE_LAYER_GRAPHS=0)."""
    traces = []

    def counting(*args, **kwargs):
        traces.append(args[2].name)
        return trace_block(*args, **kwargs)

    monkeypatch.setattr(shared_graph, "trace_block", counting)
    monkeypatch.setenv("CETRT_SHARE_LAYER_GRAPHS", "1" if shared else "0")
    export_model(ExportOptions(model=str(model), out_dir=out, dtype="float32", layers_per_block=1))
    monkeypatch.undo()
    return len(traces)


def _random_biases(directory):
    """Give the saved model's zero biases random values (a trained model's are distinct; equal ones make the
    export trace every block, tested on its own below)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn_like(param))
    model.save_pretrained(directory)


@pytest.mark.parametrize("arch", ["llama", "opt", "qwen2", "phi3"])
def test_layer_blocks_from_one_trace_are_the_traced_files(tokenizer, tmp_path, monkeypatch, arch):
    model = make_tiny_model(tmp_path / "model", arch, tokenizer, config=_layers(tiny_config(arch, len(tokenizer)), 4))
    _random_biases(tmp_path / "model")
    traced_every = _export(model, tmp_path / "every", monkeypatch, shared=False)
    traced_shared = _export(model, tmp_path / "shared", monkeypatch, shared=True)
    assert traced_every == 6 and traced_shared == 4  # embed, head, the first and the last layer block
    compared = filecmp.dircmp(tmp_path / "every", tmp_path / "shared")
    assert not compared.diff_files and not compared.left_only and not compared.right_only
    files = sorted(p.name for p in (tmp_path / "shared").glob("block_*.onnx"))
    assert len(files) == 6
    for name in files:  # dircmp compares shallowly by stat; the bytes themselves
        assert (tmp_path / "every" / name).read_bytes() == (tmp_path / "shared" / name).read_bytes(), name


def _layers(config, n: int):
    config.num_hidden_layers = n
    if getattr(config, "layer_types", None):  # Qwen2's per-layer attention kinds, one per layer
        config.layer_types = [config.layer_types[0]] * n
    return config


class _Twins(torch.nn.Module):
    """A block whose two weights are equal: an initializer of either value cannot be traced back to one."""

    def __init__(self, same: bool):
        super().__init__()
        first = torch.randn(8, 8)
        self.a = torch.nn.Parameter(first)
        self.b = torch.nn.Parameter(first.clone() if same else torch.randn(8, 8))

    def forward(self, hidden):
        return torch.nn.functional.linear(torch.nn.functional.linear(hidden, self.a), self.b)


SPEC = BlockSpec(index=1, kind="layers", first_layer=0, last_layer=1,
                 inputs=(TensorSpec(HIDDEN, "float32", ("B", "L", 8)),),
                 outputs=(TensorSpec(HIDDEN_OUT, "float32", ("B", "L", 8)),))


def test_equal_weights_are_not_traced_back_to_either():
    examples = {HIDDEN: torch.randn(2, 3, 8)}
    distinct, twins = _Twins(same=False), _Twins(same=True)
    sources = shared_graph.weight_sources(trace_block(distinct, examples, SPEC), distinct)
    assert sources is not None and {s.name for s in sources.values()} == {"a", "b"}
    assert shared_graph.weight_sources(trace_block(twins, examples, SPEC), twins) is None


def test_a_block_rebuilt_from_another_computes_with_its_own_weights():
    examples = {HIDDEN: torch.randn(2, 3, 8)}
    first, second = _Twins(same=False), _Twins(same=False)
    template = trace_block(first, examples, SPEC)
    rebuilt = shared_graph.with_weights(template, shared_graph.weight_sources(template, first), second)
    assert shared_graph.same_model(rebuilt, trace_block(second, examples, SPEC))
    assert not shared_graph.same_model(template, trace_block(second, examples, SPEC))
    session = ort.InferenceSession(rebuilt.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {HIDDEN: hidden})[0],
                               second(torch.from_numpy(hidden)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_a_mistyped_switch_is_refused_before_the_model_loads(monkeypatch, tmp_path):
    import cetrt.export.pipeline as pipeline
    from cetrt.errors import UserError

    monkeypatch.setenv("CETRT_SHARE_LAYER_GRAPHS", "yes")
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    with pytest.raises(UserError, match="CETRT_SHARE_LAYER_GRAPHS"):
        export_model(ExportOptions(model=str(tmp_path / "any-model"), out_dir=tmp_path / "out"))
