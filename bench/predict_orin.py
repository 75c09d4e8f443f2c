"""The README's Orin prediction table: ce-predict for the whole validation set on orin-agx-32gb.

Predictions, not measurements: datasheet figures and stated assumptions (each prediction carries its sources).
Usage: python bench/predict_orin.py --out bench/results/predictions_orin_agx_32gb.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cetrt.calib.predict import PredictOptions, predict_run
from cetrt.calib.workload import default_dataset

ROWS = {  # name: (model, storage, memory budget or None for the target's)
    "llama-30b-nvme": ("llama-30b", "nvme", None),
    "llama-30b-sd": ("llama-30b", "sd", None),
    "llama-30b-sd-8g": ("llama-30b", "sd", "8GiB"),
    "llama-30b-nvme-8g": ("llama-30b", "nvme", "8GiB"),
    "opt-30b-nvme": ("opt-30b", "nvme", None),
    "opt-30b-sd": ("opt-30b", "sd", None),
    "llama-7b-nvme": ("llama-7b", "nvme", None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = {}
    for name, (model, storage, budget) in ROWS.items():
        prediction = predict_run(PredictOptions(model=model, target="orin-agx-32gb", dataset=default_dataset(),
                                                storage=storage, memory_budget=budget))
        runs[name] = prediction.to_json()
        print(f"{name:<20} {prediction.chosen.total_s / 3600:.2f} h, {prediction.chosen.plan.passes} pass(es)")
    report = {"what": "ce-predict for the whole validation set on orin-agx-32gb: PREDICTIONS (datasheet figures and "
                      "stated assumptions, not measured on an Orin)",
              "command": " ".join([sys.executable, *sys.argv]), "runs": runs}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
