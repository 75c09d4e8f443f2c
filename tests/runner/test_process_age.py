"""The process's age, which results report as `phases.process_age_at_start_s` (the interpreter and imports that a
run's own timers begin after), read from /proc: a process that sleeps before asking must be at least that old."""

from __future__ import annotations

import subprocess
import sys


def test_a_process_that_slept_reports_at_least_that_age():
    code = ("import time; time.sleep(0.6)\n"
            "from cetrt.runner.memory import process_age_s\n"
            "print(process_age_s())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.55 <= age < 30  # one clock tick of rounding below the sleep; far less than a minute above it
