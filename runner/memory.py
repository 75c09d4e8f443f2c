"""What /proc says about this process: its resident set, sampled in the background while the run goes, and its
age (how long the interpreter and imports took before the run began, which a run's own timers cannot see).

On Linux it reads /proc/self/statm every 20 ms while entered; `peak_increase` is the largest RSS seen minus the
RSS when the sampler was made (the interpreter and libraries already loaded): a run makes it before its store
starts reading, so the bytes read and loaded before the executor count too, however far the reads got by then.
On the Orin, where CPU and GPU share memory, this counts host allocations only; device allocations show in the
executor's held-bytes meter.
Usage: `rss = RssSampler()` (the baseline); `with rss: ...` (sampling); `rss.peak_increase`; `process_age_s()`.
"""

from __future__ import annotations

import os
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: its start in /proc/self/stat against /proc/uptime, both since
    boot, to the kernel's clock tick, 10 ms); None where /proc does not say."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class RssSampler:
    def __init__(self, interval_s: float = 0.02):
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = rss_bytes()
        self.peak = self.baseline

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = rss_bytes()
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now

    @property
    def peak_increase(self) -> int | None:
        return None if self.baseline is None else self.peak - self.baseline

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
