"""What rounding each token's log-probability to FP16 would do to the scores: one ce-run, both ways.

The head's LogSoftmax could run on the FP16 logits (bench/head_ab.py's `log_softmax16`: half the bytes of today's
FP32 pass on ONNX Runtime CUDA), but it would write each log-probability in FP16, whose spacing is 0.004 at 4-8
nats and 0.008 at 8-16: summed over an ending's tokens, errors of the size that separates near-tied endings. This
runs the given engines once (FP32 engines isolate the rounding from the rest of FP16) with the runner's scoring
patched to score every batch twice, as computed and with each log-probability rounded to FP16 first, and reports
acc, acc_norm and the items whose prediction changed. Writes JSON with the machine, versions and command.
With `--form anchored` the rounding is the anchored head's instead (cetrt/backends/ort_head.py,
CETRT_HEAD_ANCHORED): the head's graph also returns each slot's largest log-probability (ReduceMax over its
LogSoftmax, added as the session is made), and each target's log-probability becomes itself minus that value plus
that value rounded to FP16 (equal to the target's logit minus the argmax's plus the rounded value).
Usage: python bench/head_fp16_rounding.py --engines engines/smollm2-135m/onnxruntime-cpu-float32-1lpb-inputs
       --dataset ../shared/data/hellaswag/hellaswag_val.jsonl --limit 1000 --json out.json [--form anchored]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

from cetrt.backends import onnxruntime as ort_backend
from cetrt.runner import evaluate as evaluate_module
from cetrt.runner.evaluate import RunOptions, evaluate
from cetrt.runner.scoring import item_results, metrics
from cetrt.spec import LOGPROBS

BEST = "cetrt_best_logprob"


def with_best_logprob(model):
    """The head's graph (a path or bytes) with each slot's largest log-probability as an extra output; any other
    graph as it is."""
    import onnx
    from onnx import helper

    proto = onnx.load(model) if isinstance(model, str) else onnx.ModelProto.FromString(model)
    softmax = [n for n in proto.graph.node if n.op_type == "LogSoftmax"]
    if not softmax:
        return model
    proto.graph.node.append(helper.make_node("ReduceMax", [softmax[0].output[0]], [BEST], axes=[-1], keepdims=0))
    proto.graph.output.append(helper.make_tensor_value_info(BEST, onnx.TensorProto.FLOAT, None))
    return proto.SerializeToString()


def anchored_patches(best_by_logprobs: dict):
    """Patches that make the head return its largest log-probability and keep it, by the logprobs array it came with."""
    made, ran = ort_backend._ort().InferenceSession, ort_backend.OnnxRuntimeSession.run

    def session(model, *rest, **kw):
        return made(with_best_logprob(model), *rest, **kw)

    def run(self, feeds):
        out = ran(self, feeds)
        if BEST in out:
            best = out.pop(BEST)
            best_by_logprobs[id(out[LOGPROBS])] = (out[LOGPROBS], best)  # the array kept: its id stays unique
        return out

    return [mock.patch.object(ort_backend._ort(), "InferenceSession", session),
            mock.patch.object(ort_backend.OnnxRuntimeSession, "run", run)]


def anchored_rounding(output, best_by_logprobs: dict):
    """The head's log-probabilities as the anchored head would give them: each moved by the FP16 rounding of its
    slot's largest log-probability (the one value that form rounds)."""
    logprobs, best = best_by_logprobs[id(output.logprobs)]
    if logprobs is not output.logprobs or best.shape != logprobs.shape:
        raise SystemExit("the head's largest log-probabilities do not line up with its outputs")
    rounded = best.astype(np.float16).astype(np.float64)
    return (logprobs.astype(np.float64) - best + rounded).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--form", choices=("fp16", "anchored"), default="fp16",
                        help="each log-probability rounded to FP16, or the anchored head's one rounding")
    args = parser.parse_args()

    rounded: dict[int, object] = {}
    best_by_logprobs: dict = {}

    def round_as_asked(output):
        if args.form == "anchored":
            return anchored_rounding(output, best_by_logprobs)
        return output.logprobs.astype(np.float16).astype(np.float32)

    def both_ways(encoded, batches, outputs):
        fp16 = [dataclasses.replace(o, logprobs=round_as_asked(o)) for o in outputs]
        for item in item_results(encoded, batches, fp16):
            rounded[item.ind] = item
        return item_results(encoded, batches, outputs)

    patches = [mock.patch.object(evaluate_module, "item_results", both_ways)]
    patches += anchored_patches(best_by_logprobs) if args.form == "anchored" else []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        results = evaluate(RunOptions(engines=args.engines, dataset=args.dataset, limit=args.limit, progress=False))
    seconds = time.perf_counter() - start
    exact = results.items
    if len(rounded) != len(exact):
        raise SystemExit("the patched scoring did not see every item")
    fp16 = [rounded[item.ind] for item in exact]
    as_computed, as_rounded = metrics(exact), metrics(fp16)
    changed = {"pred": [i.ind for i, r in zip(exact, fp16) if i.pred != r.pred],
               "pred_norm": [i.ind for i, r in zip(exact, fp16) if i.pred_norm != r.pred_norm]}
    gaps = [abs(a - b) for i, r in zip(exact, fp16) for a, b in zip(i.scores, r.scores)]
    out = {"benchmark": __doc__.splitlines()[0], "engines": str(args.engines), "dtype": results.dtype,
           "form": args.form, "items": len(exact), "as_computed": as_computed, "log_probs_rounded_to_fp16": as_rounded,
           "changed_predictions": {k: len(v) for k, v in changed.items()}, "changed_items": changed,
           "ending_score_change": {"max": max(gaps), "mean": float(np.mean(gaps))},
           "acc_diff_points": 100 * (as_rounded["acc"] - as_computed["acc"]),
           "acc_norm_diff_points": 100 * (as_rounded["acc_norm"] - as_computed["acc_norm"]),
           "seconds": round(seconds, 1),
           "machine": {"node": platform.node(), "processor": platform.processor(), "python": platform.python_version()},
           "command": " ".join(["bench/head_fp16_rounding.py", *sys.argv[1:]]),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "changed_items"}, indent=1))


if __name__ == "__main__":
    main()
