"""Where a GPU run's compute goes, block by block: `ce-run`'s own evaluation in this process, twice (the first
pass as a user gets it, the second with the process warm: ONNX Runtime's and CUDA's per-process caches filled,
sessions made again), timed from inside.

Per block (embed, each layer block, head), with the device synchronised when the chunk is through the block
(what ce-run does not do; so compute here is the GPU's time, not the host's view of its queue): the wall time,
the host's time in `Batch.arrays()` (ids, positions, the packed mask), in uploads, and in the sessions' `run`
calls (enqueueing). Writes JSON with the machine, versions and command.
Usage: python bench/run_blocks.py --engines /tmp/gpu/engines/smollm2 --dataset d.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

from cetrt.backends import onnxruntime as ort_backend
from cetrt.backends.device import device_for
from cetrt.runner import evaluate as evaluate_module
from cetrt.runner import executor
from cetrt.workload import packing


class Clock:
    """Host seconds per (block, what), the block being the one the executor took last."""

    def __init__(self):
        self.block = "before"
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.block_start = 0.0

    def add(self, what: str, seconds: float) -> None:
        self.seconds[self.block][what] += seconds
        self.calls[self.block][what] += 1

    def timed(self, what: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(what, time.perf_counter() - start)
        return wrapper


@contextlib.contextmanager
def instrumented(clock: Clock, device_kind: str):
    """The runner's classes with `clock` around their calls, put back as they were on leaving."""
    with contextlib.ExitStack() as stack:
        def patch(owner, name: str, value) -> None:
            stack.enter_context(mock.patch.object(owner, name, value))

        patch(packing.Batch, "arrays", clock.timed("arrays_s", packing.Batch.arrays))
        patch(ort_backend.BoundSession, "upload", clock.timed("upload_s", ort_backend.BoundSession.upload))
        for session in (ort_backend.OnnxRuntimeSession, ort_backend.BoundSession):
            patch(session, "run", clock.timed("run_s", session.__dict__["run"]))
        for store in (executor.ResidentStore, executor.StreamingStore):
            get, release = store.get, store.release

            def timed_get(self, block, get=get):
                session = get(self, block)
                clock.block = f"{block.spec.index:02d} {block.spec.name}"
                clock.block_start = time.perf_counter()
                return session

            def timed_release(self, block, release=release):
                device_for(device_kind).synchronize()
                clock.add("wall_s", time.perf_counter() - clock.block_start)
                release(self, block)
            patch(store, "get", timed_get)
            patch(store, "release", timed_release)
        yield


def one_pass(options, device_kind: str) -> dict:
    clock = Clock()
    with instrumented(clock, device_kind):
        start = time.perf_counter()
        results = evaluate_module.evaluate(options)
        seconds = time.perf_counter() - start
    blocks = {name: {k: round(v, 4) for k, v in values.items()} | {"runs": clock.calls[name].get("run_s", 0)}
              for name, values in clock.seconds.items()}
    timings = {"tokenize_s": round(results.tokenize_s, 4), "load_s": round(results.load_s, 4),
               "compute_s": round(results.compute_s, 4), "total_s": round(results.total_s, 4)}
    return {"seconds": round(seconds, 3), "timings": timings, "acc": results.metrics.get("acc"), "blocks": blocks,
            "wall_by_kind_s": {kind: round(sum(b.get("wall_s", 0) for n, b in blocks.items() if kind in n), 4)
                               for kind in ("embed", "layers", "head")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="default: calib.json's, as ce-run")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from cetrt.formats.manifest import read_manifest

    device_kind = read_manifest(args.engines).target.device
    options = evaluate_module.RunOptions(engines=args.engines, dataset=args.dataset, limit=args.limit, progress=False,
                                         tokens_per_batch=args.tokens_per_batch)
    passes = [one_pass(options, device_kind) for _ in range(args.passes)]
    import onnxruntime

    out = {"benchmark": __doc__.splitlines()[0], "engines": str(args.engines), "limit": args.limit,
           "tokens_per_batch": args.tokens_per_batch, "passes": passes,
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "onnxruntime": onnxruntime.__version__},
           "command": " ".join(["bench/run_blocks.py", *sys.argv[1:]]),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"seconds": [p["seconds"] for p in passes], "by_kind": [p["wall_by_kind_s"] for p in passes],
                      "compute": [p["timings"].get("compute_s") for p in passes]}))


if __name__ == "__main__":
    main()
