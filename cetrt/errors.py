"""User errors versus internal errors.

A `UserError` is something the user can fix (a path, an option, a stale file); the CLI prints its message and
exits 1 without a traceback. Anything else is a bug and keeps its traceback.
Usage: `raise UserError(f"{path}: no such engines directory; run `make engines` first")`.
"""


class UserError(Exception):
    """An error the user can fix; the message names the file or option and the fix."""


class MissingDependency(UserError):
    """An optional heavy dependency is not installed; the message says what to install."""

    def __init__(self, module: str, install: str, purpose: str):
        super().__init__(f"{purpose} needs the Python module '{module}', which is not installed: {install}")


class Interrupted(UserError):
    """The run was stopped by a signal after saving what finished; the CLI exits 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
