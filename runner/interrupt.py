"""SIGINT and SIGTERM stop a run at the next batch instead of killing it mid-write.

Inside `StopOnSignal()` the first SIGINT or SIGTERM only sets a flag, which the scoring loop checks after each
batch (`check()` raises `StopRequested`); the caller saves what finished and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM). A second signal acts as usual (KeyboardInterrupt, or termination), for a
user who does not want to wait for the batch. Outside the main thread nothing is installed.
Usage: `with StopOnSignal() as stop: ... stop.check() ...`.
"""

from __future__ import annotations

import signal
import threading


class StopRequested(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():  # a second signal: the usual behaviour
            signal.signal(sig, handler)

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
