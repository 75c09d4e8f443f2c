"""Issue 17's result, bench/results/gpu_llama30b.json, from the step files bench/gpu_speed.py wrote on the device.

Reads prep30b.json (the engines' shape and the calib.json measured there), llama30b.json (ce-run resident),
llama30b_third.json (ce-run at 1/3 of the weights) and harness30b.json (the harness method, weights resident).
Counted here on the CPU, with the tokenizer the engines carry (SmolLM2's) and the same dataset: the harness
method's tokens for all items (one request per ending, context + ending less the last token), cetrt's packed
tokens and useful FLOP for all items, and ce-predict (cetrt.calib.predict, the calib.json from prep30b, the run's
own budget, batch size and read-ahead) for each run, term by term against what the run reported, on the run's own
items and on all items. A run over fewer than all items is scaled to all of them by token count, and the JSON
says how.
Where llama30b_third.json is absent, the latest 1/3 run is llama30b_third_<EARLIER_THIRD>.json, predicted with the
calib.json of its own engines (prep30b_<EARLIER_THIRD>.json), and the JSON says it ran older code.
Usage: python bench/gpu_combine.py llama30b [--steps DIR] [--results DIR] [--dataset PATH]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from gpu_combine import run_summary, useful_flop

EARLIER_THIRD = "2026-12-02"  # the step files' suffix where the latest 1/3 run predates the resident one
WINNER_2023_S = 372.24  # LLaMA-30B FP16, all of HellaSwag, four 32 GB V100s (issue 17)


def harness_tokens(tokenizer, dataset: Path, limit: int | None) -> tuple[int, int]:
    """(tokens, items) the harness method runs: per ending, (context + ending)[:-1], as bench/hf_baseline.py."""
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import encode_docs

    encoded = encode_docs(tokenizer, load_docs(dataset, limit))
    return sum(len(e.context) + len(c) - 1 for e in encoded for c in e.continuations), len(encoded)


def predicted(spec, calib_json: dict, run: dict, limit: int | None, dataset: Path, tokenizer, built: int,
              model_name: str = "random-llama-30b-shape"):
    """ce-predict for a run's configuration: its budget, batch size and read-ahead, weights as inputs."""
    from cetrt.calib.predict import predict
    from cetrt.calib.rates import STORAGE_PRESETS, device_figures
    from cetrt.calib.workload import count_workload
    from cetrt.formats.calib import CalibRecord
    from cetrt.spec import Target

    calib = CalibRecord.from_json(calib_json, Path("prep30b.json"))
    # the engines as built: random_engines rounds calib's choice to a divisor of the layers (6 of calib's 8 here)
    calib = dataclasses.replace(calib, schedule={**calib.schedule, "layers_per_engine": built})
    device = device_figures(Target.from_name(calib.measured["target"]), calib, "inputs")
    schedule, plan = run["streaming"]["schedule"], run["streaming"]["plan"]
    work = count_workload(str(dataset), limit, None, (schedule["tokens_per_batch"],), spec.max_positions, tokenizer)
    storage = device.measured_storage or STORAGE_PRESETS["nvme"]
    return predict(model_name, spec, "float16", work, device, storage, plan["budget_bytes"],
                   "the measured run's budget", schedule["prefetch_depth"])


def terms(prediction, run: dict, latency_s: float) -> dict:
    s, streaming = prediction.chosen, run["streaming"]

    def pair(measured, guess, note=None) -> dict:
        out = {"measured": round(measured, 2), "predicted": round(guess, 2),
               "error": round(guess / measured - 1, 3) if measured else None}
        return out | ({"note": note} if note else {})

    return {
        "total_s": pair(latency_s, s.total_s, "measured: ce-run's latency (all but tokenizing and imports); "
                                              "predicted: compute + load + exposed reads"),
        "compute_s": pair(run["timings"]["compute_s"], s.compute_s),
        "reads_s": pair(streaming["read_s"], s.io_s, "every byte read and its chunk digest (xxh3-128) checked, hidden or not"),
        "exposed_reads_s": pair(streaming["blocked_on_storage_s"], s.exposed_io_s,
                                "measured: time blocked on the reader"),
        "load_s": pair(run["timings"]["load_s"], s.load_s, "calib's bind_s_per_block is per block of the model it "
                                                           "measured; the predictor counts one block per layer"),
        "bytes_read": {"measured": streaming["bytes_read"], "predicted": s.plan.bytes_to_read},
        "passes": {"measured": streaming["plan"]["passes"], "predicted": s.plan.passes},
        "tokens_per_batch": s.tokens_per_batch,
    }


def scaled_run(step: dict, all_tokens: int, all_items: int) -> dict:
    """A run's end-to-end time for all items: as measured when it ran them all; else its compute scaled by packed
    tokens and its tokenizing by items, everything else (process, reads, loads) as measured."""
    run = step["run"]
    results = run["results"]
    items, tokens = results["n"], results["tokens"]
    if items >= all_items:
        return {"all_items_s": run["end_to_end_s"], "scaled": False, "items_run": items, "tokens_run": tokens}
    timings = results["timings"]
    extra = timings["compute_s"] * (all_tokens / tokens - 1) + timings["tokenize_s"] * (all_items / items - 1)
    return {"all_items_s": round(run["end_to_end_s"] + extra, 2), "scaled": True, "items_run": items,
            "tokens_run": tokens, "all_tokens": all_tokens,
            "scaling": f"ran {items:,} of {all_items:,} items ({tokens:,} of {all_tokens:,} packed tokens): "
                       f"end to end {run['end_to_end_s']:.1f} s + compute {timings['compute_s']:.1f} s x "
                       f"({all_tokens:,}/{tokens:,} - 1) + tokenizing {timings['tokenize_s']:.1f} s x "
                       f"({all_items:,}/{items:,} - 1); process start, reads and loads as measured"}


def per_layer_token(step: dict, prep: dict) -> dict:
    """The resident run's compute per layer and padded token (the head and embed included) beside calib's rates
    at the run's batch size: steady (each batch repeated) and, where calib.json has it, interleaved (a chunk's
    batches back to back, as the run goes; 2026-12-04, first session) or sustained (the same after 3 s of it: the
    clocks a long run holds; since that day's second session)."""
    results = step["run"]["results"]
    size = results["streaming"]["schedule"]["tokens_per_batch"]
    row = next((r for r in prep["calib"]["measured"]["compute"] if r["tokens_per_batch"] == size), {})
    layers = prep["calib"]["measured"].get("layers_per_block", 1)
    return {"tokens_per_batch": size,
            "run_us": round(results["timings"]["compute_s"] / results["padded_tokens"]
                            / step["model_spec"]["num_layers"] * 1e6, 3),
            "calib_steady_us": round(row["s_per_token"] / layers * 1e6, 3) if row else None,
            **{f"calib_{kind}_us": round(row[f"s_per_token_{kind}"] / layers * 1e6, 3)
               for kind in ("interleaved", "sustained") if f"s_per_token_{kind}" in row}}


def combine_30b(steps: Path, results: Path, dataset: Path) -> None:
    from cetrt.calib.presets import load_counting_tokenizer
    from cetrt.spec import ModelSpec

    prep, resident, harness = (json.loads((steps / f"{n}.json").read_text())
                               for n in ("prep30b", "llama30b", "harness30b"))
    third_prep, third_from = prep, "this session's steps"
    if (steps / "llama30b_third.json").is_file():
        third = json.loads((steps / "llama30b_third.json").read_text())
    else:  # the latest 1/3 run is older than the resident one: with the calib.json of its own engines
        third_prep, third = (json.loads((steps / f"{n}_{EARLIER_THIRD}.json").read_text())
                             for n in ("prep30b", "llama30b_third"))
        third_from = (f"llama30b_third_{EARLIER_THIRD}.json with prep30b_{EARLIER_THIRD}.json: the code of "
                      f"{EARLIER_THIRD} (fused Q/K/V and gate/up projections, GPU buffers through torch, ONNX Runtime "
                      "on its own stream), not the resident run's; the device time ran out before a 1/3 run of today's")
    spec = ModelSpec.from_json(resident["model_spec"])  # the engines' own shape (SmolLM2's vocabulary)
    tokenizer = load_counting_tokenizer(None)[0]
    h_tokens_all, all_items = harness_tokens(tokenizer, dataset, None)
    h_round = harness["rounds"][-1]
    h_tokens_run, _ = harness_tokens(tokenizer, dataset, harness["items_run"])
    assert h_tokens_run == h_round["tokens"], (h_tokens_run, h_round["tokens"])  # same tokenizer, same dataset
    per_token = h_round["seconds"] / h_round["tokens"]
    runs, predictions = {}, {}
    for name, step, its_prep in (("resident", resident, prep), ("1/3", third, third_prep)):
        results_json = step["run"]["results"]
        own = predicted(spec, its_prep["calib"], results_json, results_json["n"], dataset, tokenizer,
                        its_prep["layers_per_engine"])
        everything = own if results_json["n"] >= all_items else predicted(
            spec, its_prep["calib"], results_json, None, dataset, tokenizer, its_prep["layers_per_engine"])
        assert own.work.tokens() == results_json["tokens"], (own.work.tokens(), results_json["tokens"])
        runs[name] = {**run_summary(step["run"]), **scaled_run(step, everything.work.tokens(), all_items),
                      "budget": step["budget"], "resident": results_json["streaming"]["plan"]["resident"]}
        predictions[name] = {"on_the_run_items": terms(own, results_json, results_json["latency_s"]),
                             "all_items": {k: round(v, 2) for k, v in everything.to_json().items()
                                           if k in ("predicted_s", "compute_s", "load_s", "io_s", "exposed_io_s")},
                             "sources": own.sources}
    flop, packed = useful_flop(None, spec, spec.vocab_size, dataset)
    rate = resident["matmul_tflops"]
    cetrt_s = runs["resident"]["all_items_s"]
    harness_all_s = per_token * h_tokens_all
    compute_all = resident["run"]["results"]["timings"]["compute_s"] * (
        packed / resident["run"]["results"]["tokens"])
    out = {
        "benchmark": f"issue 17: {resident['model_id']}, random FP16 weights as inputs, one {prep['calib']['measured']['device_name']}"
                     f", all {all_items:,} HellaSwag items; every ce-run a process from cold storage (page cache "
                     "dropped), the harness method (HF FP16, eager attention) weights resident",
        "cetrt_all_items_s": cetrt_s,
        "cetrt_third_budget_s": runs["1/3"]["all_items_s"],
        "third_budget_run_from": third_from,
        "harness_s_per_token": per_token,
        "harness_tokens": h_tokens_all,
        "harness_all_items_s": round(harness_all_s, 2),
        "cetrt_useful_tflops": round(flop / cetrt_s / 1e12, 1),
        "cetrt_useful_tflops_of_compute": round(flop / compute_all / 1e12, 1),
        "matmul_tflops": rate,
        "predicted_s": predictions["resident"]["all_items"]["predicted_s"],
        "predicted_third_budget_s": predictions["1/3"]["all_items"]["predicted_s"],
        "ratios": {
            "harness_over_cetrt": round(harness_all_s / cetrt_s, 3),
            "third_over_resident": round(runs["1/3"]["all_items_s"] / cetrt_s, 3),
            "winner_2023_over_cetrt": round(WINNER_2023_S / cetrt_s, 3),
            "useful_fraction_of_matmul_rate": round(flop / cetrt_s / 1e12 / rate, 3) if rate else None,
            "prediction_error_of_latency": {n: p["on_the_run_items"]["total_s"]["error"]
                                            for n, p in predictions.items()},
        },
        "items_run": {"cetrt_resident": runs["resident"]["items_run"], "cetrt_third": runs["1/3"]["items_run"],
                      "harness": harness["items_run"], "all": all_items},
        "scaling": {
            "cetrt_resident": runs["resident"].get("scaling", "ran all items: measured, not scaled"),
            "cetrt_third": runs["1/3"].get("scaling", "ran all items: measured, not scaled"),
            "harness": f"{harness['items_run']:,} items, {h_round['tokens']:,} tokens in {h_round['seconds']:.2f} s "
                       f"(second round, weights resident; first round {harness['rounds'][0]['seconds']:.2f} s) "
                       f"-> {per_token:.3e} s per token x {h_tokens_all:,} tokens for all items",
        },
        "compute_per_layer_token": per_layer_token(resident, prep),
        "useful_flop": flop, "packed_tokens_all_items": packed,
        "runs": runs, "prediction_vs_measured": predictions,
        "harness": {k: harness[k] for k in ("shape", "layers", "vocab", "items_run", "dtype", "build_on_device_s",
                                            "tokenize_s", "rounds", "parameters")},
        "engines": {k: prep[k] for k in ("shape", "layers", "layers_per_engine", "layers_per_engine_source", "distinct_layer_files",
                                         "engines_bytes_on_disk", "random_engines_s")},
        "calib": {"measured": prep["calib"]["measured"], "schedule": prep["calib"]["schedule"]},
        "definitions": {
            "cetrt_all_items_s": "ce-run as a process from cold storage, resident (budget "
                                 f"{resident['budget']}): imports, tokenizing (cache off), reading every weight "
                                 "O_DIRECT with the per-chunk xxh3-128 check, loading, scoring",
            "cetrt_useful_tflops": "useful FLOP (layers over packed tokens, attention over the pairs the packed mask "
                                   "allows, head at scored slots) / cetrt_all_items_s",
            "harness_s_per_token": "the harness method's scoring seconds / its tokens (requests' inputs, unpadded)",
            "predicted_s": "ce-predict for all items with the calib.json from prep30b, the resident run's budget, "
                           "batch size and read-ahead; fixed costs (process, tokenizing) excluded, as in ce-predict",
        },
        "machine": resident["machine"],
        "commands": {n: s["commands"] for n, s in (("prep30b", prep), ("llama30b", resident),
                                                   ("llama30b_third", third), ("harness30b", harness))},
        "step_commands": [s["command"] for s in (prep, resident, third, harness)],
        "combined_by": " ".join(["python", *sys.argv]),
    }
    (results / "gpu_llama30b.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in out.items() if isinstance(v, (int, float))}, indent=1))
    print(json.dumps(out["ratios"], indent=1))
