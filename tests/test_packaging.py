"""Layout rules: stage folders import as cetrt.*, nothing imports PyPA's `build` by accident."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("cetrt", "export", "build", "runner", "calib", "tests", "bench") for p in (ROOT / d).rglob("*.py")]


def test_stage_folders_import_under_cetrt():
    import cetrt.build.engines
    import cetrt.calib
    import cetrt.export.pipeline
    import cetrt.runner.evaluate

    assert Path(cetrt.build.engines.__file__).parent == ROOT / "build"
    assert Path(cetrt.export.pipeline.__file__).parent == ROOT / "export"


def test_no_code_imports_build_or_a_stage_folder_as_a_top_level_module():
    pattern = re.compile(r"^\s*(from|import)\s+(build|export|runner|calib)(\.|\s|$)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if pattern.search(p.read_text())]
    assert offenders == []


def test_makefile_never_runs_pypa_build():
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any("-m build" in line for line in recipes)
