"""Model families: each is one module and one registry line; the new ones (Phi-3, Qwen2) go through
`make engines` and `ce-run` and score like Hugging Face's own classes; nothing else branches on a name."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cetrt.errors import UserError
from cetrt.export.loading import load_model
from cetrt.families import FAMILY_NAMES, family_of_model_type, get_family, presets
from cetrt.runner.scoring import mean_stderr
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import encode_docs

from reference import harness_scores

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGE_CODE = ("cetrt", "export", "calib", "build", "runner")
N_DOCS = 16


@pytest.mark.parametrize("arch", ["phi3", "qwen2"])
def test_make_engines_and_ce_run_score_like_hugging_face(zoo, hellaswag_path, tmp_path, arch):
    model = zoo.model(arch)
    onnx_dir, engines, results = tmp_path / "onnx", tmp_path / "engines", tmp_path / "results.json"
    subprocess.run(["make", "engines", f"MODEL={model}", f"ONNX={onnx_dir}", f"OUT={engines}", "LAYERS_PER_BLOCK=2",
                    f"DATASET={hellaswag_path}"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([BIN / "ce-run", "--engines", engines, "--dataset", hellaswag_path, "--limit", str(N_DOCS),
                    "--json", results, "--quiet"], check=True, capture_output=True)
    data = json.loads(results.read_text())
    assert json.loads((engines / "manifest.json").read_text())["model"]["architecture"] == arch

    loaded = load_model(str(model))
    expected, _ = harness_scores(loaded.model, encode_docs(loaded.tokenizer, load_docs(hellaswag_path, N_DOCS)))
    ours = np.array([item["scores"] for item in data["items"]])
    assert np.abs(ours - expected).max() <= 1e-3
    lengths = np.array([item["lengths"] for item in data["items"]])
    labels = np.array([item["label"] for item in data["items"]])
    acc = (expected.argmax(1) == labels).astype(float)
    acc_norm = ((expected / lengths).argmax(1) == labels).astype(float)
    assert data["acc"] == pytest.approx(acc.mean()) and data["acc_norm"] == pytest.approx(acc_norm.mean())
    assert data["acc_stderr"] == pytest.approx(mean_stderr(list(acc)))


def test_every_family_fills_its_record():
    for name in FAMILY_NAMES:
        family = get_family(name)
        assert family.name == name and family.model_types and family.hf_class.endswith("ForCausalLM")
        assert family.embed_inputs and family.layer_inputs[0] == "hidden"
        assert family.presets, name
        for preset in family.presets.values():
            assert preset.architecture == name
            assert family.layer_params(preset) > 0 and family.embed_params(preset) > 0
            assert family.head_params(preset) > preset.vocab_size * preset.embed_dim - 1


@pytest.mark.parametrize("preset, billions", [("llama-30b", 32.5), ("opt-30b", 30.0), ("phi-3-mini", 3.8),
                                              ("phi-3-medium", 14.0), ("qwen2-7b", 7.6), ("llama-7b", 6.7)])
def test_presets_have_their_published_sizes(preset, billions):
    """Each family's count, over its published shape, gives the parameter count the model is known by."""
    spec = presets()[preset]
    family = get_family(spec.architecture)
    total = family.embed_params(spec) + spec.num_layers * family.layer_params(spec) + family.head_params(spec)
    assert total / 1e9 == pytest.approx(billions, rel=0.04)


def test_an_unknown_model_type_names_the_families():
    with pytest.raises(UserError, match=r"model_type 'mistral' is not supported; cetrt exports llama \(LlamaForCausalLM\)"):
        family_of_model_type("mistral")
    with pytest.raises(UserError, match="unknown model family"):
        get_family("gpt2")


def test_no_code_outside_the_families_branches_on_a_family_name():
    """A family's name appears as a string only in its module and the registry: a new family cannot be
    half-added by copying a branch."""
    found = []
    for folder in STAGE_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "cetrt" / "families"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            keys = {id(k) for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys}  # {"opt": ...} of a profile
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in FAMILY_NAMES and id(node) not in keys:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []
