"""Every test file is collected by the default collection (pytest skips any folder named `build` unless told
otherwise, which once dropped tests/build/ from CI without a word)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_file_is_collected():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    collected = {line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line}
    assert files - collected == set(), listed.stdout[-2000:] + listed.stderr[-2000:]
    assert any(name.startswith("tests/build/") for name in collected)
