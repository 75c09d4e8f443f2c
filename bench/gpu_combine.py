"""The GPU results of issues 12, 16 and 17, from the step files bench/gpu_speed.py wrote on the device.

`7b` (the default) reads bench/results/gpu_steps/{smollm2,llama7b}.json (committed as they came back) and writes
bench/results/gpu_end_to_end_7b.json and bench/results/gpu_engines.json with the keys the issues name, every
figure taken from the step files, plus the useful FLOP of the 7B run, counted here: packed tokens through the
layers, attention over the pairs the packed mask allows, the head at the scored slots (SmolLM2's tokenizer, the
one the random 7B engines carry). `llama30b` reads {prep30b,llama30b,llama30b_third,harness30b}.json and writes
gpu_llama30b.json (bench/gpu_combine_30b.py): the issue's keys, ce-predict against each run term by term, and
the scaling to all items by token count where a run covered fewer. `7b-whole` reads whole7b.json (issue 12's
runs and harness on every item) and writes gpu_end_to_end_7b_all_items.json in gpu_end_to_end_7b.json's form.
`device` reads device7b_h100.json and writes gpu_device_ab_7b.json: the GPU buffers through cuda-bindings against
torch's. `stream` reads stream7b.json and writes gpu_stream_ab_7b.json: ONNX Runtime on its own stream against the
runner's.
Usage: python bench/gpu_combine.py [7b|7b-whole|llama30b|device|stream] [--steps bench/results/gpu_steps]
       [--results bench/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "bench" / "results" / "gpu_steps"
RESULTS = ROOT / "bench" / "results"
DATASET = ROOT.parent / "shared" / "data" / "hellaswag" / "hellaswag_val.jsonl"


def useful_flop(limit: int | None, spec=None, vocab: int = 49152, dataset: Path = DATASET) -> tuple[float, int]:
    """Forward FLOP of the work itself for a shape (default LLaMA-7B's) with SmolLM2's vocabulary, and the packed
    tokens."""
    from cetrt.calib.presets import load_counting_tokenizer
    from cetrt.families import presets
    from cetrt.workload.hellaswag import load_docs
    from cetrt.workload.tokens import encode_docs

    spec = spec or presets()["llama-7b"]
    encoded = encode_docs(load_counting_tokenizer(None)[0], load_docs(dataset, limit))
    tokens = sum(len(e.context) + sum(len(c) - 1 for c in e.continuations) for e in encoded)
    pairs = sum(len(e.context) * (len(e.context) + 1) // 2
                + sum((len(c) - 1) * len(e.context) + (len(c) - 1) * len(c) // 2 for c in e.continuations)
                for e in encoded)
    scored = sum(len(c) for e in encoded for c in e.continuations)
    layer = 2 * spec.layer_params() * tokens + 4 * spec.num_heads * spec.head_dim * pairs
    return spec.num_layers * layer + 2 * spec.hidden_size * vocab * scored, tokens


def run_summary(run: dict) -> dict:
    results, streaming = run["results"], run["results"]["streaming"]
    return {"end_to_end_s": run["end_to_end_s"], "latency_s": results["latency_s"],
            "compute_s": results["timings"]["compute_s"], "load_s": results["timings"]["load_s"],
            "tokenize_and_imports_s": results["timings"]["tokenize_s"], "bytes_read": streaming["bytes_read"],
            "read_s": streaming["read_s"], "read_gb_per_s": round(streaming["read_bytes_per_s"] / 1e9, 3),
            "blocked_on_storage_s": streaming["blocked_on_storage_s"], "passes": streaming["plan"]["passes"],
            "reader_slot_wait_s": streaming.get("reader_slot_wait_s"),  # None before 2026-12-04's second session
            "reader_buffer_s": streaming.get("reader_buffer_s"),
            "host_buffers": streaming.get("host_buffers"),  # None before 2026-12-04's third session
            "device_setup_s": results.get("phases", {}).get("of_which_device_setup_s"),  # None before 2026-12-02
            **outside_the_run(run),
            "acc": results["acc"], "acc_norm": results["acc_norm"], "page_cache_dropped": run["page_cache_dropped"]}


def outside_the_run(run: dict) -> dict:
    """The process's time outside ce-run's own timer (`total_s`): before it (interpreter, imports; the results'
    `phases.process_age_at_start_s`, since 2026-12-05) and after it (writing results.json, freeing, exiting: what is
    left of the time measured from outside). Both None for runs before that field."""
    age = run["results"].get("phases", {}).get("process_age_at_start_s")
    if age is None:
        return {"before_run_s": None, "after_run_s": None}
    after = run["end_to_end_s"] - age - run["results"]["timings"]["total_s"]
    return {"before_run_s": age, "after_run_s": round(after, 3)}


def device_ab(ours: dict, torch_device: dict) -> dict:
    """The GPU buffers through cuda-bindings (the default since 2026-12-02) against torch's (CETRT_DEVICE=torch),
    the same run otherwise, one after the other on the same machine."""
    ours, torch_device = run_summary(ours), run_summary(torch_device)
    keys = ("end_to_end_s", "latency_s", "device_setup_s", "compute_s", "blocked_on_storage_s")
    return {"cuda_bindings": {k: ours[k] for k in keys}, "torch": {k: torch_device[k] for k in keys},
            "torch_end_to_end_over_cuda_bindings": round(torch_device["end_to_end_s"] / ours["end_to_end_s"], 3),
            "same_scores": (ours["acc"], ours["acc_norm"]) == (torch_device["acc"], torch_device["acc_norm"])}


def synchronised_compute(big: dict, harness: dict, flop: float, rate: float) -> dict | None:
    """The 7B engines' compute with the device synchronised after each block's runs (bench/run_blocks.py in the
    llama7b step since 2026-12-04's third session), beside ce-run's own compute timer, the host's view. Where the
    step made two passes (since 2026-12-05's third session) the second, warm one is judged, as the harness's
    resident round is; the first, with the process's one-time costs, is kept beside it."""
    blocks = big.get("blocks_synchronised")
    if not blocks:
        return None
    passes = [sum(one["wall_by_kind_s"].values()) for one in blocks["passes"]]
    by_kind = blocks["passes"][-1]["wall_by_kind_s"]
    seconds = passes[-1]
    tflops = flop / seconds / 1e12
    return {"seconds": round(seconds, 3), "pass": len(passes), "first_pass_seconds": round(passes[0], 3),
            "by_kind_s": by_kind,
            "harness_over_it": round(harness["resident_rounds"][0]["seconds"] / seconds, 3),
            "useful_tflops": round(tflops, 1), "fraction_of_matmul_rate": round(tflops / rate, 3)}


def predictions_7b(steps: Path, big: dict, step_file: str, dataset: Path) -> dict | None:
    """ce-predict (the calib.json of the llama7b step's own engines: inside the step file since 2026-12-06's second
    session, before that `gpu_steps/calib_llama7b.json`, copied beside it by hand) for each 7B run, term by term
    against what the run reported: the issue's predictor error, reported again. None where neither holds a
    calib.json of these engines (its model hash is theirs, as ce-run requires of the calib.json it reads)."""
    if big.get("calib"):
        calib, calib_path = big["calib"], steps / step_file
    else:
        calib_path = steps / "calib_llama7b.json"
        calib = json.loads(calib_path.read_text()) if calib_path.is_file() else None
    if calib is None or calib["model_hash"] != big["runs"]["resident"]["results"]["model_hash"]:
        return None
    from cetrt.calib.presets import load_counting_tokenizer
    from cetrt.families import presets
    from gpu_combine_30b import predicted, terms

    spec = dataclasses.replace(presets()["llama-7b"], vocab_size=49152)  # the random engines carry SmolLM2's tokenizer
    tokenizer = load_counting_tokenizer(None)[0]
    out = {"calib": str(calib_path.relative_to(ROOT) if calib_path.is_relative_to(ROOT) else calib_path), "by_run": {}}
    for name, run in big["runs"].items():
        if "refused" in run or name == "resident_torch_device":
            continue
        results_json = run["results"]
        guess = predicted(spec, calib, results_json, results_json["n"], dataset, tokenizer,
                          calib["schedule"]["layers_per_engine"], model_name="random-llama-7b-shape")
        assert guess.work.tokens() == results_json["tokens"], (guess.work.tokens(), results_json["tokens"])
        out["by_run"][name] = terms(guess, results_json, results_json["latency_s"])
    return out


def harness_scored_once_s(harness: dict) -> float:
    """The harness method end to end as a user runs it, scoring once: bench/hf_harness.py's clock from its start to
    the end of its first round (`scored_once_s`, recorded since 2026-12-06's third session); in earlier step files
    its `end_to_end_s`, which runs on through the resident rounds, less those rounds. Until then gpu_end_to_end_7b's
    hf_end_to_end_s counted the resident round too (45.18 s for 33.07 s in 2026-12-06's second session)."""
    if harness.get("scored_once_s") is not None:
        return harness["scored_once_s"]
    return round(harness["end_to_end_s"] - sum(r["seconds"] for r in harness["resident_rounds"]), 3)


def end_to_end_7b(steps: Path, big: dict, step_file: str, items: str, dataset: Path) -> dict:
    """Issue 12's benchmark (gpu_end_to_end_7b.json's keys) from a step file with the probes, ce-run's runs
    (resident, 1/3, 1/6) and the harness: llama7b's (items 0-1999) or whole7b's (every item)."""
    probe = max(p["gb_per_s"] for p in big["probe"])
    run_probe = big["probe_run_bytes"][0]["gb_per_s"] if big.get("probe_run_bytes") else None  # since 2026-12-04
    refused = {name: run["refused"] for name, run in big["runs"].items() if "refused" in run}
    runs = {name: run_summary(run) for name, run in big["runs"].items() if name not in refused
            and name != "resident_torch_device"}
    resident = runs["resident"]
    harness = big["harness"]
    harness_once_s = harness_scored_once_s(harness)
    floor = max(resident["bytes_read"] / 1e9 / probe, resident["compute_s"])
    end_to_end = {
        "benchmark": f"LLaMA-7B shape, random FP16 weights, {items}, weights as inputs, ORT 1.31.1 CUDA; every run "
                     "a process timed from outside, page cache dropped before it; see definitions",
        "cetrt_end_to_end_s": resident["end_to_end_s"],
        "hf_end_to_end_s": harness_once_s,
        "hf_resident_s": harness["resident_rounds"][0]["seconds"],
        "cetrt_compute_s": resident["compute_s"],
        "probe_read_gb_per_s": probe,
        "probe_run_bytes": big.get("probe_run_bytes"),  # every layer file once, 16 MiB x 4 (since 2026-12-04, third)
        "cetrt_read_gb_per_s": resident["read_gb_per_s"],
        "bytes_read": resident["bytes_read"],
        "budgets": {name: runs.get(name) or {"refused": refused[name]} for name in ("1/3", "1/6")},
        "schedule": big["runs"]["resident"]["results"]["streaming"]["schedule"],
        "device_ab": (device_ab(big["runs"]["resident"], big["runs"]["resident_torch_device"])
                      if "resident_torch_device" in big["runs"] else None),
        "resident": resident,
        "ratios": {
            "reader_over_probe": {name: round(r["read_gb_per_s"] / probe, 3) for name, r in runs.items()},
            "reader_over_run_sized_probe": ({name: round(r["read_gb_per_s"] / run_probe, 3) for name, r in runs.items()}
                                            if run_probe else None),
            "latency_over_floor": {name: round(r["latency_s"] / max(r["bytes_read"] / 1e9 / probe, r["compute_s"]), 3)
                                   for name, r in runs.items()},
            "hf_end_to_end_over_cetrt_end_to_end": round(harness_once_s / resident["end_to_end_s"], 3),
            "floor_s": round(floor, 3),
        },
        "hf": {k: harness[k] for k in ("imports_s", "load_s", "tokenize_s")}
              | {"first_round_s": harness["first_round"]["seconds"], "scored_once_s": harness_once_s,
                 "with_the_resident_round_s": harness["end_to_end_s"]},
        "definitions": {
            "cetrt_end_to_end_s": "ce-run as a process from cold storage: interpreter, imports, tokenizing (cache off), "
                                  "reading every weight O_DIRECT with the per-chunk xxh3-128 check, loading, scoring",
            "hf_end_to_end_s": "bench/hf_harness.py as a process, scoring once: its clock from its start to the end "
                               "of its first round (imports, safetensors from cold disk to the GPU, tokenizing, "
                               "scoring with the harness's method); the process then scores again, weights resident "
                               "(hf_resident_s), which this does not count (it did before 2026-12-06's third "
                               "session). Its clock starts once the interpreter is up and stops before its teardown: "
                               "cetrt's figure, timed from outside, counts both",
            "hf_resident_s": "the same scoring again, weights resident (the old baseline)",
            "cetrt_compute_s": "ce-run's compute timer (blocks run, batch inputs built and uploaded); with ONNX Runtime "
                               "on the runner's stream (CETRT_SHARED_STREAM in the step's cetrt_environment, the "
                               "default since 2026-12-03) the host's view: queueing runs and waiting for the head's "
                               "outputs, while part of the GPU's work overlaps time counted as blocked on storage",
            "latency_over_floor": "ce-run's latency (end to end minus tokenizing and imports, which its timer "
                                  "counts together) over max(bytes read / probe rate, compute)",
            "tokenize_and_imports_s": "ce-run's tokenize timer: loading the tokenizer (with `tokenizers` alone, "
                                      "no transformers import since 2026-12-02) and encoding the items",
        },
        "machine": big["machine"],
        # whole7b's parts may come from several calls on one machine: each call's commands
        "commands": [c for call in big["calls"] for c in call["commands"]] if "calls" in big else big["commands"],
        "step_command": [call["command"] for call in big["calls"]] if "calls" in big else big["command"],
        "predictions": predictions_7b(steps, big, step_file, dataset),
    }
    return end_to_end


def combine_whole_7b(steps: Path, results: Path, dataset: Path) -> None:
    """gpu_end_to_end_7b_all_items.json from gpu_speed.py whole7b's step file."""
    big = json.loads((steps / "whole7b.json").read_text())
    n = big["runs"]["resident"]["results"]["n"]
    items = f"all {n:,} items" if big["limit"] is None else f"items 0-{n - 1}"
    end_to_end = end_to_end_7b(steps, big, "whole7b.json", items, dataset)
    (results / "gpu_end_to_end_7b_all_items.json").write_text(json.dumps(end_to_end, indent=2) + "\n")
    print(json.dumps(end_to_end["ratios"], indent=1))


def combine_7b(steps: Path, results: Path, dataset: Path) -> None:
    small = json.loads((steps / "smollm2.json").read_text())
    big = json.loads((steps / "llama7b.json").read_text())
    end_to_end = end_to_end_7b(steps, big, "llama7b.json", "items 0-1999", dataset)
    (results / "gpu_end_to_end_7b.json").write_text(json.dumps(end_to_end, indent=2) + "\n")
    resident, harness = end_to_end["resident"], big["harness"]

    flop, tokens = useful_flop(2000, dataset=dataset)
    rate = big["matmul_tflops"]
    engines = {
        "benchmark": "issue 16: the GPU path with the defaults a user gets, against the harness's method, both as "
                     "processes counting imports, loading and tokenizing; ORT 1.31.1 CUDA on one H200",
        "smollm2_harness_s": small["harness_fp16"]["end_to_end_s"],
        "smollm2_cetrt_s": small["cetrt"]["end_to_end_s"],
        "smollm2_harness_over_cetrt": small["harness_over_cetrt"],
        "smollm2_device_ab": (device_ab(small["cetrt"], small["cetrt_torch_device"])
                              if "cetrt_torch_device" in small else None),
        "smollm2_compute_s": {"cetrt": small["cetrt"]["results"]["timings"]["compute_s"],
                              "harness_scoring": small["harness_fp16"]["first_round"]["seconds"]},
        "smollm2_cetrt_outside_run_s": outside_the_run(small["cetrt"]),  # 1.65 s in 2026-12-04's run, not split
        "llama7b_harness_s": harness["resident_rounds"][0]["seconds"],
        "llama7b_cetrt_compute_s": resident["compute_s"],
        "llama7b_harness_over_cetrt_compute": round(harness["resident_rounds"][0]["seconds"] / resident["compute_s"], 3),
        "matmul_tflops": round(rate, 1),
        "llama7b_useful_flop": flop,
        "llama7b_packed_tokens": tokens,
        "llama7b_useful_tflops": round(flop / resident["compute_s"] / 1e12, 1),
        "llama7b_fraction_of_matmul_rate": round(flop / resident["compute_s"] / 1e12 / rate, 3),
        "llama7b_compute_synchronised": synchronised_compute(big, harness, flop, rate),
        "accuracy": {
            "smollm2_all_items": {"cetrt_fp16": {"acc": small["cetrt"]["results"]["acc"],
                                                 "acc_norm": small["cetrt"]["results"]["acc_norm"]},
                                  "hf_fp16": {k: small["harness_fp16"]["first_round"][k] for k in ("acc", "acc_norm")},
                                  "hf_fp32_reference": {k: small["reference_fp32"]["first_round"][k]
                                                        for k in ("acc", "acc_norm")},
                                  "hf_fp32_reference_from": reference_source(small["reference_fp32"]),
                                  "cetrt_minus_fp32_points": {"acc": small["acc_diff_points_vs_fp32"],
                                                              "acc_norm": small["acc_norm_diff_points_vs_fp32"]}},
            "llama7b_random_weights": {"acc": resident["acc"], "acc_norm": resident["acc_norm"],
                                       "note": "random weights: chance-level by design; equal in all three runs"},
        },
        "profiles": {"smollm2_layer_block": small["profile"], "llama7b_layer_block": big["profile"],
                     # the heads' profiles: since 2026-12-05's fourth session (absent from earlier step files)
                     "smollm2_head": small.get("profile_head"), "llama7b_head": big.get("profile_head")},
        "smollm2_schedule": small["prepared"]["calib"]["schedule"],
        "machine": small["machine"], "commands": small["commands"] + big["commands"],
        "step_commands": [small["command"], big["command"]],
        "combined_by": " ".join(["python", *sys.argv]),
    }
    (results / "gpu_engines.json").write_text(json.dumps(engines, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in engines.items() if isinstance(v, (int, float))}, indent=1))
    print(json.dumps(end_to_end["ratios"], indent=1))


# step files renamed after a later step reused them (gpu_speed.py smollm2 --reference-from)
RENAMED = {"bench/results/gpu_steps/smollm2.json": "bench/results/gpu_steps/smollm2_2026-12-02.json"}


def reference_source(reference: dict) -> str:
    """Where the FP32 reference's run is: this step, or the earlier step file it was reused from."""
    reused = reference.get("reused_from")
    if not reused:
        return "run in this step"
    return f"reused from {RENAMED.get(reused, reused)} (same model, items and harness code; HF FP32, not cetrt)"


def combine_stream(steps: Path, results: Path) -> None:
    """ONNX Runtime's stream A/B (gpu_speed.py stream7b): each round's pair, the medians, the score differences."""
    import statistics

    step = json.loads((steps / "stream7b.json").read_text())
    keys = ("end_to_end_s", "latency_s", "compute_s", "load_s", "blocked_on_storage_s", "acc", "acc_norm")
    rounds = [{side: {k: run_summary(r[side])[k] for k in keys} for side in ("own_stream", "shared_stream")}
              for r in step["rounds"]]
    median = {side: {k: statistics.median(r[side][k] for r in rounds) for k in keys[:5]}
              for side in ("own_stream", "shared_stream")}
    out = {"benchmark": "ce-run resident on the prep7b engines (LLaMA-7B shape, random FP16 weights, items 0-1999): "
                        "ONNX Runtime on its own stream, synchronised after every run, against ONNX Runtime on the "
                        "runner's compute stream without a sync per run (CETRT_SHARED_STREAM=1, the default since), "
                        "alternating, page cache dropped before each, one call; then the shared stream at 1/3 of the "
                        "weights",
           "rounds": rounds, "median": median,
           "own_over_shared": {k: round(median["own_stream"][k] / median["shared_stream"][k], 3)
                               for k in ("end_to_end_s", "compute_s")},
           "max_score_difference_vs_own_stream": dict(zip(("shared_round_0", "shared_round_1", "shared_third_budget"),
                                                          step["max_score_difference_vs_own_stream"])),
           "shared_stream_third_budget": run_summary(step["shared_stream_third_budget"]),
           "machine": step["machine"], "commands": step["commands"], "step_command": step["command"],
           "combined_by": " ".join(["python", *sys.argv])}
    (results / "gpu_stream_ab_7b.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("median", "own_over_shared", "max_score_difference_vs_own_stream")}, indent=1))


def combine_device(steps: Path, results: Path, name: str = "device7b_h100.json") -> None:
    """The GPU buffers' A/B (gpu_speed.py device7b): each round's pair, and the medians' ratio."""
    import statistics

    step = json.loads((steps / name).read_text())
    pairs = [device_ab(r["cuda_bindings"], r["torch"]) for r in step["rounds"]]
    median = {side: {k: statistics.median(p[side][k] for p in pairs) for k in pairs[0][side]}
              for side in ("cuda_bindings", "torch")}
    out = {"benchmark": "ce-run resident on the prep7b engines (LLaMA-7B shape, random FP16 weights, items 0-1999), "
                        "GPU buffers through cuda-bindings (the default) against torch's (CETRT_DEVICE=torch), "
                        "alternating, page cache dropped before each, one call",
           "rounds": pairs, "median": median,
           "torch_end_to_end_over_cuda_bindings": round(median["torch"]["end_to_end_s"]
                                                        / median["cuda_bindings"]["end_to_end_s"], 3),
           "machine": step["machine"], "commands": step["commands"], "step_command": step["command"],
           "combined_by": " ".join(["python", *sys.argv])}
    (results / "gpu_device_ab_7b.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("median", "torch_end_to_end_over_cuda_bindings")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="7b", choices=("7b", "7b-whole", "llama30b", "device", "stream"))
    parser.add_argument("--steps", type=Path, default=STEPS, help="where the step files are")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="the dataset the runs scored (for counting)")
    args = parser.parse_args()
    if args.which == "7b":
        combine_7b(args.steps, args.results, args.dataset)
    elif args.which == "7b-whole":
        combine_whole_7b(args.steps, args.results, args.dataset)
    elif args.which == "device":
        combine_device(args.steps, args.results)
    elif args.which == "stream":
        combine_stream(args.steps, args.results)
    else:
        from gpu_combine_30b import combine_30b

        combine_30b(args.steps, args.results, args.dataset)


if __name__ == "__main__":
    main()
