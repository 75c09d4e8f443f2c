"""The mutant gauntlet (`make mutants`): plant each bug of catalogue.py in a copy, run its tests, fail on a survivor.

The repository's files (tracked, and untracked ones git does not ignore) are copied to a temporary folder; the
tests run there with boot/sitecustomize.py on PYTHONPATH, so every process imports `cetrt` from the copy and
not from the editable install. First the union of all selected tests runs on the unchanged copy and must
pass (it also fills the shared tiny-model zoo, which later runs reuse where the export's sources are unchanged:
the folder CETRT_TEST_ZOO names if set, as .ci/run sets it for `make test` before, else a new one); then each
bug in turn: planted, its tests run, the file restored. A bug is killed when
its tests fail; survived when they pass; an anchor that is not found exactly once, or a run that collects no
test, fails the gauntlet too. Prints one row per bug: bug, tests run, result, seconds.
Usage: `python tests/mutants/gauntlet.py [--only SUBSTRING] [--keep] [--verbose]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from catalogue import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BOOT = "tests/mutants/boot"
TIMEOUT_S = 900


def copy_repository(destination: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(copy: Path, env: dict[str, str], tests: list[str]) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not gpu and not tensorrt",
               *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    return done.returncode, done.stdout[-3000:] + done.stderr[-2000:]


def plant(copy: Path, mutant: Mutant) -> str | None:
    """Plant the bug; returns the file's original text, or None when the anchor is not found exactly once."""
    path = copy / mutant.file
    original = path.read_text() if path.is_file() else ""
    if original.count(mutant.old) != 1:
        return None
    path.write_text(original.replace(mutant.old, mutant.new))
    return original


def verdict(returncode: int) -> str:
    """pytest: 0 all passed, 1 some failed, 2 interrupted (a collection error: the bug broke an import)."""
    if returncode in (1, 2):
        return "killed"
    if returncode == 0:
        return "SURVIVED"
    return f"ERROR (pytest exit {returncode}: no test ran?)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run only the bugs whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and zoo")
    parser.add_argument("--verbose", action="store_true", help="print the tests' output for killed bugs too")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only is None or args.only in m.name]
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="cetrt-mutants-"))
    copy = scratch / "repo"
    zoo = Path(os.environ["CETRT_TEST_ZOO"]) if os.environ.get("CETRT_TEST_ZOO") else scratch / "zoo"
    copy_repository(copy)
    env = {**os.environ, "PYTHONPATH": str(copy / BOOT), "CETRT_SOURCE_ROOT": str(copy), "CETRT_TEST_ZOO": str(zoo),
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "CETRT_HELLASWAG": os.environ.get("CETRT_HELLASWAG", str(ROOT.parent / "shared" / "data" / "hellaswag" /
                                                                    "hellaswag_val.jsonl"))}
    rows, failed = [], False
    try:
        where = subprocess.run([sys.executable, "-c", "import cetrt.runner, cetrt; print(cetrt.runner.__file__)"],
                               env=env, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"the copy is not what imports: cetrt.runner came from {where!r}")
            return 1
        baseline = sorted({t for m in mutants for t in m.tests})
        began = time.perf_counter()
        code, output = run_tests(copy, env, baseline)
        print(f"baseline: {len(baseline)} test selections on the unchanged copy, exit {code}, "
              f"{time.perf_counter() - began:.0f} s", flush=True)
        if code != 0:
            print(output)
            print("the baseline fails: fix the tests before judging mutants")
            return 1
        for mutant in mutants:
            began = time.perf_counter()
            original = plant(copy, mutant)
            if original is None:
                result = "ANCHOR MISSING: update the mutant"
            else:
                try:
                    code, output = run_tests(copy, env, list(mutant.tests))
                finally:
                    (copy / mutant.file).write_text(original)
                result = verdict(code)
                if result != "killed" or args.verbose:
                    print(output)
            failed |= result != "killed"
            rows.append((mutant.name, ", ".join(t.split("/")[-1] for t in mutant.tests), result,
                         time.perf_counter() - began))
            print(f"  {result:<9} {rows[-1][3]:5.0f} s  {mutant.name}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'bug':<{width}}  {'result':<9} {'s':>5}  tests")
    for name, tests, result, seconds in rows:
        print(f"{name:<{width}}  {result:<9} {seconds:5.0f}  {tests}")
    killed = sum(r[2] == "killed" for r in rows)
    print(f"\n{killed} of {len(rows)} bugs killed in {time.perf_counter() - start:.0f} s")
    return 1 if failed or len(rows) != len(mutants) else 0


if __name__ == "__main__":
    sys.exit(main())
