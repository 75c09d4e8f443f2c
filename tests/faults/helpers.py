"""Shared by the fault suite: run a command line in-process and check it ends in one `error:` line.

Usage: `output = fails_cleanly(run_command, [...], "sha256")`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner


def fails_cleanly(command, args, message: str, code: int = 1) -> str:
    """Exit `code`, no traceback (a SystemExit, not an exception), exactly one `error:` line naming `message`."""
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.output  # a traceback would be another exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert message in errors[0], result.output
    assert "Traceback" not in result.output
    return errors[0]


def copy_engines(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest
