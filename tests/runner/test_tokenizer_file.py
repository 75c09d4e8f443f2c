"""ce-run loads a saved tokenizer with `tokenizers` alone (cetrt.workload.tokens.TokenizerFile), not transformers.

It must be the tokenizer transformers loads from the same directory (the export's tokenizer/, which the export
saved from the model's own tokenizer class; tests/runner/test_harness_parity.py ties that to the harness), for what the harness's encoding reads:
the backend's serialization (so encode_batch_fast gives the same ids), BOS and EOS ids, the prefix's decoded text,
and every document's encoding. Checked on each family's tiny tokenizer and SmolLM2's real one.
"""

from __future__ import annotations

import pytest
from tiny_models import ARCHS
from transformers import AutoTokenizer

from cetrt.formats.blocks import TOKENIZER_DIR
from cetrt.sources import resolve_source
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import HarnessTokenizer, TokenizerFile, _encode, offline_tokenizer


@pytest.fixture(scope="module")
def directories(zoo, tmp_path_factory):
    out = {arch: zoo.onnx(arch) / TOKENIZER_DIR for arch in ARCHS}  # what ce-run loads: the export's copy
    source = resolve_source("smollm2-135m")
    smollm2 = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file).save_pretrained(smollm2)
    out["smollm2-135m"] = smollm2
    return out


@pytest.mark.parametrize("name", [*ARCHS, "smollm2-135m"])
def test_the_light_tokenizer_is_the_one_transformers_loads(directories, hellaswag_path, name):
    directory = directories[name]
    light, full = offline_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert isinstance(light, TokenizerFile)
    assert light.backend_tokenizer.to_str() == full.backend_tokenizer.to_str()
    assert (light.bos_token_id, light.eos_token_id) == (full.bos_token_id, full.eos_token_id)
    assert HarnessTokenizer(light).prefix_text == HarnessTokenizer(full).prefix_text
    docs = load_docs(str(hellaswag_path), 40)
    assert _encode(light, docs) == _encode(full, docs)
