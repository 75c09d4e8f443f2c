"""The reader beside a thread running Python: how fast `read_file` reads and checks a file (O_DIRECT, the
runner's requests in flight, xxh3-128 per 16 MiB chunk) alone, and beside a thread that runs Python without
pause (as ce-run's executor does while it binds and queues block after block on a GPU), each with Python's
default GIL hand-over (5 ms) and with the one ce-run sets while it runs (cetrt.storage.readers_first). Rounds
alternate the four; the file is written once, in the working folder, and deleted after.
Usage: python bench/reader_gil.py --gib 1 --rounds 4 --json bench/results/reader_gil_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cetrt.files import FileRecord  # noqa: E402
from cetrt.storage import DEFAULT_REQUEST_BYTES, READERS_SWITCH_INTERVAL_S, ReadPlan, ReadPool, ReadStats, read_file  # noqa: E402

PYTHON_DEFAULT_S = 0.005


def spin(stop: threading.Event) -> None:
    """Python without pause: the executor's thread between its GIL-free calls, exaggerated."""
    total = 0
    while not stop.is_set():
        for i in range(1000):
            total += i * i


def read_once(path: Path, record: FileRecord, requests: int, switch_s: float, busy: bool) -> float:
    """GB/s of one read of the whole file, checked, with the given hand-over and Python thread."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    stop = threading.Event()
    other = threading.Thread(target=spin, args=(stop,)) if busy else None
    pool = ReadPool(ReadPlan(requests_in_flight=requests))
    try:
        if other:
            other.start()
        start = time.perf_counter()
        read_file(path, ReadStats(), record=record, pool=pool)
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        if other:
            other.join()
        pool.close()
        sys.setswitchinterval(before)
    return path.stat().st_size / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the file read")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests-in-flight", type=int, default=2, help="the 7B and 30B runs' calib chose 2")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where the file is written (the disk measured)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    path = args.dir / f"reader_gil_{os.getpid()}.bin"
    chunk = DEFAULT_REQUEST_BYTES
    try:
        with open(path, "wb") as f:
            for _ in range(int(args.gib * (1 << 30)) // chunk):
                f.write(os.urandom(chunk))
        record = FileRecord.of(path.parent, path, chunk)
        sides = {"alone": (PYTHON_DEFAULT_S, False), "alone_ce_run": (READERS_SWITCH_INTERVAL_S, False),
                 "busy_python_default": (PYTHON_DEFAULT_S, True), "busy_ce_run": (READERS_SWITCH_INTERVAL_S, True)}
        rounds = [{name: round(read_once(path, record, args.requests_in_flight, *side), 3)
                   for name, side in sides.items()} for _ in range(args.rounds)]
    finally:
        path.unlink(missing_ok=True)
    median = {name: statistics.median(r[name] for r in rounds) for name in sides}
    result = {
        "benchmark": "read_file of one file, O_DIRECT, xxh3-128 chunk checks, alone and beside a Python thread "
                     "that never pauses, with Python's GIL hand-over (5 ms) and ce-run's; rounds alternate",
        "file_bytes": int(args.gib * (1 << 30)) // chunk * chunk, "requests_in_flight": args.requests_in_flight,
        "switch_interval_s": {"python_default": PYTHON_DEFAULT_S, "ce_run": READERS_SWITCH_INTERVAL_S},
        "gb_per_s_by_round": rounds, "median_gb_per_s": median,
        "busy_over_alone": {"python_default": round(median["busy_python_default"] / median["alone"], 3),
                            "ce_run": round(median["busy_ce_run"] / median["alone"], 3)},
        "ce_run_over_python_default": {"alone": round(median["alone_ce_run"] / median["alone"], 3),
                                       "busy": round(median["busy_ce_run"] / median["busy_python_default"], 3)},
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_gb_per_s", "busy_over_alone", "ce_run_over_python_default")}, indent=1))


if __name__ == "__main__":
    main()
