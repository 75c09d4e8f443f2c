"""When a stage may skip its work: its recorded inputs equal the ones it would use now, and its outputs verify.

Each stage records `inputs` (model hash or export digest, options, the versions of what produced the files) in
the file it writes last (blocks.json, calib.json, manifest.json). Rerun with the same inputs, a stage reuses its
outputs after checking every file's sha256; otherwise it says which input changed and redoes the work.
Versions are read from the installed distributions' metadata, without importing them.
Usage: `why = changed(recorded.inputs, inputs)`; `None` means unchanged.
"""

from __future__ import annotations

from importlib import metadata

import cetrt


def versions(*distributions: str) -> dict[str, str]:
    """cetrt's version and each named distribution's (or "absent")."""
    out = {"cetrt": cetrt.__version__}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def changed(recorded: dict | None, wanted: dict) -> str | None:
    """None when the recorded inputs equal the wanted ones, else the first that differs, in words."""
    if not recorded:
        return "no record of its inputs"
    for key, value in wanted.items():
        if recorded.get(key) != value:
            old = recorded.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                inner = [k for k in value if old.get(k) != value[k]]
                if inner:
                    return f"{key}.{inner[0]} was {old.get(inner[0])!r}, now {value[inner[0]]!r}"
            return f"{key} was {old!r}, now {value!r}"
    return None
