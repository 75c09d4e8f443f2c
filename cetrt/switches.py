"""On/off environment switches, one parser for all: each takes 1 or 0, or unset (or empty) for its default, and
refuses anything else by name, so a typo never quietly runs the default.

Most exist as the baseline of a benchmark's A/B (the order or mechanism before a change); a few let a user
override a choice. The README's "Environment switches" lists them.
Settings that name one of a few choices are read the same way by `choice`.
Usage: `if switch("CETRT_LOAD_AS_READ", default=True): ...`; `parse(name, setting, default)` for a value in hand;
`choice("CETRT_DEVICE", ("torch", "cuda-bindings"), default="cuda-bindings")`.
"""

from __future__ import annotations

import os

from cetrt.errors import UserError


def switch(name: str, default: bool) -> bool:
    """The environment variable `name` as on (1) or off (0), else `default`."""
    return parse(name, os.environ.get(name, ""), default)


def parse(name: str, setting: str, default: bool) -> bool:
    value = setting.strip()
    if value not in ("", "0", "1"):
        raise UserError(f"{name}={setting!r}: give 1 or 0, or leave it unset for the default")
    return value == "1" if value else default


def choice(name: str, options: tuple[str, ...], default: str) -> str:
    """The environment variable `name`, one of `options`, else `default`; anything else is refused by name."""
    value = os.environ.get(name, "").strip()
    if value and value not in options:
        raise UserError(f"{name}={value!r}: give {' or '.join(options)}, or leave it unset for the default")
    return value or default
