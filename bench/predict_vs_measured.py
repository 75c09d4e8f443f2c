"""Benchmark: the run-time predictor (ce-predict) against runs measured on this workplace's machines.

Each case names a measured run (a results.json of ce-run, or a run inside a bench/results JSON) and the
calib.json measured on the same machine; the predictor gets the same model shape, dataset slice, budget,
tokens per batch, read-ahead and weights layout, and its prediction is set against the measured latency
(everything but tokenization), term by term where the run reports the term.
Usage: python bench/predict_vs_measured.py --out bench/results/predict_vs_measured.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cpu_vs_harness import machine  # noqa: E402

from cetrt.calib.predict import predict  # noqa: E402
from cetrt.calib.presets import load_counting_tokenizer  # noqa: E402
from cetrt.calib.rates import calib_from_option, device_figures  # noqa: E402
from cetrt.calib.workload import count_workload  # noqa: E402
from cetrt.families import presets  # noqa: E402
from cetrt.formats.calib import CalibRecord  # noqa: E402
from cetrt.spec import ModelSpec, Target  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DATASET = str(ROOT.parent / "shared" / "data" / "hellaswag" / "hellaswag_val.jsonl")
LLAMA_7B_RANDOM = ModelSpec(  # bench/random_llama.py: LLaMA-7B's shape with SmolLM2's vocabulary
    architecture="llama", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
    head_dim=128, intermediate_size=11008, vocab_size=49152, max_positions=4096, embed_dim=4096)


def gpu_cases() -> list[dict]:
    stream = json.loads((RESULTS / "gpu_h100_llama7b_two_ways_stream.json").read_text())
    real = json.loads((RESULTS / "gpu_h100_smollm2_calibrated.json").read_text())
    cases = [{"name": "ORT CUDA, SmolLM2-135M FP16, all items, resident, weights as inputs", "model": "smollm2-135m",
              "spec": presets()["smollm2-135m"], "calib": real["calib"], "run": real["cetrt_fp16"]["streaming"],
              "latency_s": real["cetrt_fp16"]["latency_s"], "limit": None, "weights": "inputs",
              "timings": real["cetrt_fp16"]["timings"], "source": "gpu_h100_smollm2_calibrated.json"}]
    for layout in ("inputs", "inside"):
        for budget in ("resident", "budget_1_3"):
            run = stream["stream"][layout]["runs"][budget]
            cases.append({"name": f"ORT CUDA, LLaMA-7B shape, 2,000 items, {budget.replace('_', ' ')}, weights {layout}",
                          "model": "llama-7b-random", "spec": LLAMA_7B_RANDOM, "calib": stream["calib"], "run": run,
                          "latency_s": run["latency_s"], "limit": 2000, "weights": layout,
                          "timings": {"load_s": run["load_s"], "compute_s": run["compute_s"]},
                          "source": "gpu_h100_llama7b_two_ways_stream.json"})
    return cases


def cpu_cases(cpu_runs: Path, calib_path: Path) -> list[dict]:
    calib = calib_from_option(calib_path)
    cases = []
    for name, label in (("cpu_inputs_resident.json", "resident"), ("cpu_inputs_two_fifths.json", "2/5 budget (1/4 is below two engines + a batch)")):
        data = json.loads((cpu_runs / name).read_text())
        cases.append({"name": f"ORT CPU, SmolLM2-135M FP32, 200 items, {label}, weights as inputs",
                      "model": "smollm2-135m", "spec": presets()["smollm2-135m"], "calib": calib,
                      "run": data["streaming"], "latency_s": data["latency_s"], "limit": 200, "weights": "inputs",
                      "timings": data["timings"], "source": f"{cpu_runs / name} (this machine, with `make engines`)"})
    return cases


def compare(case: dict, tokenizer) -> dict:
    run, plan = case["run"], case["run"]["plan"]
    calib = case["calib"]
    if not isinstance(calib, CalibRecord):  # a calib.json kept inside a committed bench result
        calib = CalibRecord.from_json(calib, RESULTS / case["source"])
    target = Target.from_name(calib.measured["target"])
    device = device_figures(target, calib, case["weights"])
    schedule = run["schedule"]
    dtype = "float32" if calib.dtype == "float32" else "float16"
    work = count_workload(DATASET, case["limit"], None, (schedule["tokens_per_batch"],),
                          case["spec"].max_positions, tokenizer)
    with tempfile.TemporaryDirectory():
        prediction = predict(case["model"], case["spec"], dtype, work, device, device.measured_storage,
                             plan["budget_bytes"], "the measured run's budget", schedule["prefetch_depth"])
    chosen = prediction.chosen
    predicted, measured = chosen.total_s, case["latency_s"]
    return {
        "case": case["name"], "measured_in": case["source"],
        "measured_s": round(measured, 2), "predicted_s": round(predicted, 2),
        "error": round(predicted / measured - 1, 3),
        "terms": {
            "compute_s": {"measured": round(case["timings"]["compute_s"], 2), "predicted": round(chosen.compute_s, 2)},
            "load_s": {"measured": round(case["timings"]["load_s"], 2), "predicted": round(chosen.load_s, 2)},
            "exposed_io_s": {"measured": round(run.get("blocked_on_storage_s", 0.0), 2),
                             "predicted": round(chosen.exposed_io_s, 2),
                             "note": "measured: time blocked on the reader; resident runs read synchronously "
                                     "(their reads show in latency, not as blocked time)"},
            "passes": {"measured": plan["passes"], "predicted": chosen.plan.passes},
            "bytes_read": {"measured": run["bytes_read"], "predicted": chosen.plan.bytes_to_read},
        },
        "prediction_sources": prediction.sources,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-runs", type=Path, default=ROOT / "artifacts" / "bench",
                        help="where the CPU runs' results.json files are (see the README's Reproduce table)")
    parser.add_argument("--cpu-calib", type=Path, default=ROOT / "artifacts" / "onnx" / "smollm2-135m" / "calib.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tokenizer, _ = load_counting_tokenizer(None)
    cases = cpu_cases(args.cpu_runs, args.cpu_calib) + gpu_cases()
    results = [compare(case, tokenizer) for case in cases]
    report = {"benchmark": "ce-predict against measured runs, same configuration", "command": " ".join([sys.executable, *sys.argv]),
              "machine_for_cpu_cases": machine(), "cases": results,
              "calib_measured": {case["source"]: getattr(case["calib"], "measured", None) or case["calib"]["measured"]
                                 for case in cases}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['case']:<75} measured {r['measured_s']:8.2f} s  predicted {r['predicted_s']:8.2f} s  "
              f"error {r['error']:+.1%}")


if __name__ == "__main__":
    main()
