"""The registry of model families: one line per family, its module imported when first asked for (torch).

Usage: `get_family(spec.architecture)`; `spec = spec_from_config(config)`; `presets()["llama-30b"]`.
"""

from __future__ import annotations

import importlib
from typing import Any

from cetrt.errors import UserError
from cetrt.families.base import Family
from cetrt.spec import ModelSpec

_MODULES = {
    "llama": "cetrt.families.llama",
    "opt": "cetrt.families.opt",
    "phi3": "cetrt.families.phi3",
    "qwen2": "cetrt.families.qwen2",
}
FAMILY_NAMES = tuple(_MODULES)


def get_family(name: str) -> Family:
    if name not in _MODULES:
        raise UserError(f"unknown model family {name!r}; cetrt knows {list(FAMILY_NAMES)}")
    return importlib.import_module(_MODULES[name]).FAMILY


def families() -> list[Family]:
    return [get_family(name) for name in FAMILY_NAMES]


def family_of_model_type(model_type: Any, where: str = "the model's config") -> Family:
    """The family that exports this config.json `model_type`, or one line naming those that exist."""
    for family in families():
        if model_type in family.model_types:
            return family
    known = ", ".join(f"{t} ({f.hf_class})" for f in families() for t in f.model_types)
    raise UserError(f"{where}: model_type {model_type!r} is not supported; cetrt exports {known}")


def spec_from_config(config: Any, where: str = "the model's config") -> ModelSpec:
    return family_of_model_type(getattr(config, "model_type", None), where).spec_from_config(config)


def presets() -> dict[str, ModelSpec]:
    """Every family's published shapes by name, for ce-predict."""
    return {name: spec for family in families() for name, spec in family.presets.items()}
