"""The GPU's clocks, power and throttle reasons while a benchmark runs, sampled by nvidia-smi in the background.

Why: the 30B run's compute took 2.03 us a layer token where calib's short bursts of the same layer took 1.80;
a GPU held at full load for minutes may lower its clocks (power or heat), which no short measurement sees.
Usage: `with GpuClocks() as clocks: ...; clocks.summary()` (None where nvidia-smi is missing: a CPU machine).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading

FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "clocks_event_reasons.active")


class GpuClocks:
    def __init__(self, interval_ms: int = 500):
        self._interval_ms = interval_ms
        self._process: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "GpuClocks":
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={','.join(FIELDS)}", "--format=csv,noheader,nounits",
                 f"-lms={self._interval_ms}", "-i", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.append(line.strip())

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._reader.join(timeout=10)

    def samples(self) -> list[dict]:
        rows = []
        for line in self._lines:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(FIELDS):
                continue
            try:
                rows.append({"sm_mhz": float(parts[0]), "mem_mhz": float(parts[1]), "power_w": float(parts[2]),
                             "temperature_c": float(parts[3]), "reasons": parts[4]})
            except ValueError:
                continue
        return rows

    def summary(self) -> dict | None:
        """Clocks and power over the samples taken while the GPU was busy (power above half its peak in the run),
        and how often each throttle-reason mask was active then; None without samples."""
        rows = self.samples()
        if not rows:
            return None
        busy = [r for r in rows if r["power_w"] >= 0.5 * max(r["power_w"] for r in rows)]
        reasons: dict[str, int] = {}
        for r in busy:
            reasons[r["reasons"]] = reasons.get(r["reasons"], 0) + 1

        def spread(key: str) -> dict:
            values = sorted(r[key] for r in busy)
            return {"median": statistics.median(values), "min": values[0], "max": values[-1]}

        return {"interval_ms": self._interval_ms, "samples": len(rows), "busy_samples": len(busy),
                "sm_mhz": spread("sm_mhz"), "mem_mhz": spread("mem_mhz"), "power_w": spread("power_w"),
                "temperature_c": spread("temperature_c"), "reasons_while_busy": reasons,
                "sm_mhz_by_tenth": [statistics.median(r["sm_mhz"] for r in part) for part in _tenths(busy)]}


def _tenths(rows: list) -> list[list]:
    """The busy samples in ten consecutive parts (fewer where there are fewer than ten): the clock's course."""
    n = min(10, len(rows))
    return [rows[i * len(rows) // n:(i + 1) * len(rows) // n] for i in range(n)]
