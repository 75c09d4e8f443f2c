"""The scoring head's tail in six forms, on ONNX Runtime, random FP16 weights, one process, the same inputs.

The head turns every scored slot's hidden state into a vocabulary of logits and keeps two numbers a slot: the
target's log-probability and whether the target is the argmax. On SmolLM2 (49,152 tokens, hidden 576) the logits
are most of its memory traffic: at 1.2 M slots for all items, 121 GB in FP16, 242 GB once cast to FP32, and
today's form (`log_softmax`: Cast, LogSoftmax, GatherElements, ArgMax over the FP32 copy) writes and reads the
FP32 tensor three times. `argmax16` is today's with ArgMax over the FP16 logits (exact: the cast to FP32 is
exact); `log_softmax16` takes LogSoftmax over the FP16 logits (ONNX Runtime's CUDA kernel accumulates in FP32 but
writes FP16: each log-probability rounded to FP16, as the harness's FP16 run computes it); `anchored16` takes the
same FP16 LogSoftmax but keeps only the argmax's log-probability from it, and adds the target's logit minus the
argmax's, exact in FP32 (the one rounding is of the argmax's log-probability, at least -log(vocab) and near 0
where the model is confident, where FP16's steps are finest). The last two need no
[slots, vocab] output after the cast:
`logsumexp`: the target's logit minus ReduceLogSumExp over the FP32 logits, ArgMax over the FP16 logits (exact:
the cast to FP32 is exact); `max_shift`: the same with the log-sum-exp spelled out (ReduceMax, Sub, Cast, Exp,
ReduceSum, Log), which is what a backend without a fused reduction runs. (ONNX Runtime's CUDA ReduceLogSumExp
itself is several passes through cuDNN: its reduction_ops.cc.)

Per form: the steady seconds per run at the given slot counts (the fastest of 5 after 3 warm runs, the device
synchronised) and the largest difference of its log-probabilities from a float64 reference over the same FP16
logits. Writes JSON with the machine, versions and command.
Usage: python bench/head_ab.py --shape smollm2 --slots 10000 --json out.json [--provider CUDAExecutionProvider]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# (hidden, vocabulary); the random 7B and 30B engines of the GPU steps carry SmolLM2's 49,152-token tokenizer
SHAPES = {"smollm2": (576, 49152), "llama-7b": (4096, 49152), "llama-30b": (6656, 49152)}
FORMS = ("log_softmax", "argmax16", "log_softmax16", "anchored16", "logsumexp", "max_shift")
WARM_RUNS, TIMED_RUNS = 3, 5


def head_graph(form: str, hidden: int, weight: np.ndarray) -> onnx.ModelProto:
    """picked [S, H] FP16, target [S, 1] int64 -> logprob [S, 1] FP32, greedy [S, 1] bool."""
    nodes = [helper.make_node("MatMul", ["picked", "weight"], ["logits"])]
    if form in ("log_softmax", "argmax16"):
        nodes += [helper.make_node("Cast", ["logits"], ["logits32"], to=TensorProto.FLOAT),
                  helper.make_node("LogSoftmax", ["logits32"], ["all_logprobs"], axis=-1),
                  helper.make_node("GatherElements", ["all_logprobs", "target"], ["logprob"], axis=-1),
                  helper.make_node("ArgMax", ["logits32" if form == "log_softmax" else "logits"], ["best"], axis=-1,
                                   keepdims=1)]
    elif form == "log_softmax16":
        nodes += [helper.make_node("LogSoftmax", ["logits"], ["all_logprobs16"], axis=-1),
                  helper.make_node("GatherElements", ["all_logprobs16", "target"], ["logprob16"], axis=-1),
                  helper.make_node("Cast", ["logprob16"], ["logprob"], to=TensorProto.FLOAT),
                  helper.make_node("ArgMax", ["logits"], ["best"], axis=-1, keepdims=1)]
    elif form == "anchored16":
        nodes += [helper.make_node("LogSoftmax", ["logits"], ["all_logprobs16"], axis=-1),
                  helper.make_node("ArgMax", ["logits"], ["best"], axis=-1, keepdims=1),
                  helper.make_node("GatherElements", ["all_logprobs16", "best"], ["best_logprob16"], axis=-1),
                  helper.make_node("GatherElements", ["logits", "best"], ["best_logit16"], axis=-1),
                  helper.make_node("GatherElements", ["logits", "target"], ["target_logit16"], axis=-1),
                  helper.make_node("Cast", ["best_logprob16"], ["best_logprob"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["best_logit16"], ["best_logit"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["target_logit16"], ["target_logit"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["target_logit", "best_logit"], ["below_best"]),
                  helper.make_node("Add", ["below_best", "best_logprob"], ["logprob"])]
    else:
        if form == "logsumexp":
            nodes += [helper.make_node("Cast", ["logits"], ["logits32"], to=TensorProto.FLOAT),
                      helper.make_node("ReduceLogSumExp", ["logits32"], ["lse"], axes=[-1], keepdims=1)]
        else:
            nodes += [helper.make_node("ReduceMax", ["logits"], ["top16"], axes=[-1], keepdims=1),
                      helper.make_node("Sub", ["logits", "top16"], ["shifted16"]),
                      helper.make_node("Cast", ["shifted16"], ["shifted"], to=TensorProto.FLOAT),
                      helper.make_node("Exp", ["shifted"], ["exps"]),
                      helper.make_node("ReduceSum", ["exps", "axis"], ["sums"], keepdims=1),
                      helper.make_node("Log", ["sums"], ["log_sums"]),
                      helper.make_node("Cast", ["top16"], ["top"], to=TensorProto.FLOAT),
                      helper.make_node("Add", ["log_sums", "top"], ["lse"])]
        nodes += [helper.make_node("GatherElements", ["logits", "target"], ["target_logit16"], axis=-1),
                  helper.make_node("Cast", ["target_logit16"], ["target_logit"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["target_logit", "lse"], ["logprob"]),
                  helper.make_node("ArgMax", ["logits"], ["best"], axis=-1, keepdims=1)]
    nodes.append(helper.make_node("Equal", ["best", "target"], ["greedy"]))
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(np.array([-1], np.int64), "axis")]
    graph = helper.make_graph(
        nodes, f"head_{form}",
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT16, ["S", hidden]),
         helper.make_tensor_value_info("target", TensorProto.INT64, ["S", 1])],
        [helper.make_tensor_value_info("logprob", TensorProto.FLOAT, ["S", 1]),
         helper.make_tensor_value_info("greedy", TensorProto.BOOL, ["S", 1])],
        [i for i in inits if i.name in {n for node in nodes for n in node.input}])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def logits_graph(hidden: int, weight: np.ndarray) -> onnx.ModelProto:
    """The head's MatMul alone: the FP16 logits every form starts from, for the reference."""
    graph = helper.make_graph([helper.make_node("MatMul", ["picked", "weight"], ["logits"])], "logits",
                              [helper.make_tensor_value_info("picked", TensorProto.FLOAT16, ["S", hidden])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["S", weight.shape[1]])],
                              [numpy_helper.from_array(weight, "weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def reference(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 log-probabilities and argmax over the provider's own FP16 logits."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return np.take_along_axis(logits, target, -1) - lse, logits.argmax(-1)[:, None] == target


def time_form(session, provider: str, picked: np.ndarray, target: np.ndarray) -> float:
    device = "cuda" if provider.startswith("CUDA") else "cpu"
    binding = session.io_binding()
    binding.bind_ortvalue_input("picked", ort.OrtValue.ortvalue_from_numpy(picked, device, 0))
    binding.bind_ortvalue_input("target", ort.OrtValue.ortvalue_from_numpy(target, device, 0))
    for name in ("logprob", "greedy"):
        binding.bind_output(name, device)
    seconds = []
    for attempt in range(WARM_RUNS + TIMED_RUNS):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if attempt >= WARM_RUNS:
            seconds.append(time.perf_counter() - start)
    return min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--slots", type=int, nargs="+", default=[10000])
    parser.add_argument("--check-slots", type=int, default=256, help="rows compared with the float64 reference")
    parser.add_argument("--provider", default="CUDAExecutionProvider")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    hidden, vocab = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((hidden, vocab), np.float32) / np.sqrt(hidden) * 4).astype(np.float16)
    sessions = {form: ort.InferenceSession(head_graph(form, hidden, weight).SerializeToString(),
                                           providers=[args.provider])
                for form in FORMS}
    check = {}
    picked = rng.standard_normal((args.check_slots, hidden), np.float32).astype(np.float16)
    target = rng.integers(0, vocab, (args.check_slots, 1), dtype=np.int64)
    logits = ort.InferenceSession(logits_graph(hidden, weight).SerializeToString(),
                                  providers=[args.provider]).run(None, {"picked": picked})[0]
    target[::4] = logits.argmax(-1)[::4, None]  # some targets are the argmax, so greedy is checked both ways
    ref_logprob, ref_greedy = reference(logits, target)
    for form, session in sessions.items():
        logprob, greedy = session.run(None, {"picked": picked, "target": target})
        check[form] = {"max_abs_logprob_diff": float(np.abs(logprob - ref_logprob).max()),
                       "mean_abs_logprob_diff": float(np.abs(logprob - ref_logprob).mean()),
                       "greedy_mismatches": int((greedy != ref_greedy).sum())}
    timings = {}
    for slots in args.slots:
        picked = rng.standard_normal((slots, hidden), np.float32).astype(np.float16)
        target = rng.integers(0, vocab, (slots, 1), dtype=np.int64)
        row = {form: time_form(session, args.provider, picked, target) for form, session in sessions.items()}
        row.update({f"log_softmax_over_{form}": row["log_softmax"] / row[form] for form in FORMS[1:]})
        timings[str(slots)] = row
        print(slots, json.dumps(row), flush=True)
    result = {"benchmark": __doc__.splitlines()[0], "shape": args.shape, "hidden": hidden, "vocab": vocab,
              "provider": args.provider, "seconds_per_run": timings, "accuracy": check,
              "machine": {"node": platform.node(), "processor": platform.processor()},
              "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
              "command": " ".join(["bench/head_ab.py", *sys.argv[1:]]),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(check))


if __name__ == "__main__":
    main()
