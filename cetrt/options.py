"""Option values checked when the command line is parsed, so a bad value stops the command before any work.

`parse_size` reads sizes such as 8GiB, 512MB or 1.5GiB; `MemoryBudget` is the click type of `--memory-budget`
(a size or 'auto'; with `machine=True` a size larger than this machine's memory is refused with both figures);
`POSITIVE` and `NON_NEGATIVE` are click integer ranges. Light imports only: `--help` stays instant.
Usage: `@click.option("--memory-budget", type=MemoryBudget(machine=True))`.
"""

from __future__ import annotations

import re

import click

from cetrt.errors import UserError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)


def parse_size(text: str, option: str = "--memory-budget") -> int:
    """'8GiB', '512MB', '1.5GiB', '1000000' -> bytes; at least one byte."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not match or match.group(2) not in _UNITS:
        raise UserError(f"{option} {text!r}: give a size such as 8GiB, 512MiB or 2GB, or 'auto'")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size < 1:
        raise UserError(f"{option} {text!r}: must be more than 0 bytes")
    return size


def machine_memory() -> int | None:
    """MemTotal from /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryBudget(click.ParamType):
    """A size or 'auto', checked at parse time; the value stays the text the stages take."""

    name = "size"

    def __init__(self, machine: bool = False):
        self.machine = machine  # the budget is for this machine (ce-run), not a named target (ce-predict)

    def convert(self, value, param, ctx):
        if value is None or str(value).strip().lower() == "auto":
            return None if value is None else "auto"
        option = f"--{param.name.replace('_', '-')}" if param is not None else "--memory-budget"
        try:
            size = parse_size(value, option)
        except UserError as e:
            self.fail(str(e), param, ctx)
        total = machine_memory() if self.machine else None
        if total is not None and size > total:
            self.fail(f"{value} ({size / 2**30:,.2f} GiB) is more than this machine's memory ({total / 2**30:,.2f} GiB); "
                      "give at most that, or 'auto' for what is free now", param, ctx)
        return str(value)
