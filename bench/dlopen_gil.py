"""Tokenizing beside a thread that loads large shared libraries from a cold page cache: with ctypes.CDLL (which
holds the GIL through dlopen, as ONNX Runtime's preload_dlls and cuda-pathfinder load CUDA's libraries) against
the same loads inside cetrt.backends.libraries.gil_free_loads (the default since 2026-12-05), and tokenizing alone.

What ce-run does on a GPU, scaled to what this machine has: its main thread tokenizes every item (the harness's
encoding, cache off) while the preparation thread loads about 2 GB of CUDA and cuDNN libraries. Here the thread
loads the largest libraries installed beside cetrt (torch's and TensorRT-RTX's unless --library is given). Each run
is a fresh process, the page cache dropped before it where this user may (recorded), sides alternating, --rounds
rounds; the timer is the tokenizing alone, from the thread's start to the encoding's end. Writes JSON with the
machine, versions and command.
Usage: python bench/dlopen_gil.py --tokenizer DIR --dataset hellaswag_val.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SIDES = ("alone", "ctypes", "gil_free")


def default_libraries() -> list[str]:
    """The two largest libraries a CI install of cetrt has: torch's CPU library and TensorRT-RTX's."""
    import importlib.util

    found = []
    for package, relative in (("torch", "lib/libtorch_cpu.so"), ("tensorrt_rtx_libs", "libtensorrt_rtx.so.1")):
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if path.is_file():
                found.append(str(path))
    return found


def child(side: str, args) -> dict:
    """One run: tokenize every item on this thread while another loads the libraries (unless alone); or, with
    `--probe python`, run Python on this thread while the other loads and keep its longest wait (the GIL itself: a
    library loads once per process, so each probe is its own run)."""
    import ctypes

    from cetrt.backends.libraries import gil_free_loads

    loaded = {}

    def load() -> None:
        start = time.perf_counter()
        if side == "gil_free":
            with gil_free_loads():
                for path in args.library:
                    ctypes.CDLL(path)
        else:
            for path in args.library:
                ctypes.CDLL(path)
        loaded["load_s"] = time.perf_counter() - start

    thread = threading.Thread(target=load) if side != "alone" else None
    if args.probe == "python":
        thread.start()
        longest, last = 0.0, time.perf_counter()
        while thread.is_alive():
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
        thread.join()
        return {"load_s": round(loaded["load_s"], 4), "python_longest_wait_s": round(longest, 4)}
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import HarnessTokenizer, harness_requests, offline_tokenizer

    harness = HarnessTokenizer(offline_tokenizer(args.tokenizer))
    pairs = harness_requests(load_docs(args.dataset, args.limit))
    start = time.perf_counter()
    if thread:
        thread.start()
    harness.encode_pairs(pairs)
    tokenize_s = time.perf_counter() - start
    if thread:
        thread.join()
    return {"tokenize_s": round(tokenize_s, 4), "load_s": round(loaded.get("load_s", 0.0), 4)}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a saved tokenizer (tokenizer.json)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--library", action="append", help="a shared library to load (repeat); default: see above")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=("tokenize", "python"), default="tokenize", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.library = args.library or default_libraries()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    if not args.library:
        sys.exit("no library to load: give --library")
    runs: dict[str, list] = {side: [] for side in SIDES}
    waits: dict[str, list] = {side: [] for side in SIDES[1:]}
    for _ in range(args.rounds):
        for probe, sides, into in (("tokenize", SIDES, runs), ("python", SIDES[1:], waits)):
            for side in sides:
                dropped = drop_page_cache()
                command = [sys.executable, __file__, "--child", side, "--probe", probe, "--tokenizer",
                           str(args.tokenizer), "--dataset", args.dataset]
                command += (["--limit", str(args.limit)] if args.limit else [])
                command += [f"--library={path}" for path in args.library]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"the {side} run ({probe}) failed:\n{done.stderr[-2000:]}")
                into[side].append({**json.loads(done.stdout), "page_cache_dropped": dropped})
    medians = {side: statistics.median(r["tokenize_s"] for r in done) for side, done in runs.items()}
    longest_waits = {side: statistics.median(r["python_longest_wait_s"] for r in done) for side, done in waits.items()}
    import onnxruntime
    import tokenizers

    result = {"benchmark": __doc__.split("\n\n")[0].replace("\n", " "),
              "libraries": {path: os.path.getsize(path) for path in args.library},
              "runs": runs, "median_tokenize_s": medians, "python_waits": waits,
              "median_python_longest_wait_s": longest_waits,
              "ctypes_over_gil_free": round(medians["ctypes"] / medians["gil_free"], 3),
              "gil_free_over_alone": round(medians["gil_free"] / medians["alone"], 3),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
                          "tokenizers": tokenizers.__version__, "onnxruntime": onnxruntime.__version__},
              "command": " ".join(sys.argv)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians), json.dumps(longest_waits), result["ctypes_over_gil_free"])


if __name__ == "__main__":
    main()
