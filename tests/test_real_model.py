"""The default model (SmolLM2-135M from its GGUF file): export, build, and score like the HF model does.

Slow (the GGUF dequantizes in about half a minute and 30 layers export), so it runs once, with six layers per
block; CI runs it (marker `slow`, not skipped).
"""

from __future__ import annotations

import numpy as np
import pytest

from cetrt.build.engines import BuildOptions, build_engines
from cetrt.export.loading import DEFAULT_MODEL, load_model
from cetrt.export.pipeline import ExportOptions, export_loaded
from cetrt.formats.manifest import read_manifest
from cetrt.runner.evaluate import RunOptions, evaluate, load_tokenizer
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import encode_docs

from reference import harness_scores

N_DOCS = 6


@pytest.mark.slow
def test_default_model_scores_equal_the_hugging_face_model(hellaswag_path, tmp_path):
    loaded = load_model(DEFAULT_MODEL, dtype="float32")
    assert loaded.spec.architecture == "llama" and loaded.spec.num_layers == 30 and loaded.spec.hidden_size == 576
    export_loaded(loaded, ExportOptions(model=DEFAULT_MODEL, out_dir=tmp_path / "onnx", dtype="float32", layers_per_block=6))
    build_engines(BuildOptions(onnx_dir=tmp_path / "onnx", out_dir=tmp_path / "engines"))
    results = evaluate(RunOptions(engines=tmp_path / "engines", dataset=str(hellaswag_path), limit=N_DOCS, progress=False))

    encoded = encode_docs(load_tokenizer(tmp_path / "engines", read_manifest(tmp_path / "engines")), load_docs(hellaswag_path, N_DOCS))
    expected, _ = harness_scores(loaded.model, encoded)
    ours = np.array([item.scores for item in results.items])
    assert np.abs(ours - expected).max() <= 1e-3
    assert results.model == DEFAULT_MODEL and len(read_manifest(tmp_path / "engines").blocks) == 7
