"""lm-evaluation-harness 0.4.13's own hellaswag task, on documents given here instead of the hub dataset.

The installed hellaswag.yaml is loaded as the harness loads it (its `process_docs`, doc_to_text, doc_to_choice,
doc_to_target; `target_delimiter` from its TaskConfig), and only its dataset is replaced, as
bench/harness/tasks/hellaswag_local does for a local jsonl.
Usage: `task = hellaswag_task(records)`; `task.build_all_requests(limit=10, rank=0, world_size=1)`.
"""

from __future__ import annotations

from pathlib import Path


def hellaswag_task(records: list[dict]):
    import datasets
    import lm_eval.tasks.hellaswag.utils as hellaswag_utils
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(hellaswag_utils.__file__).with_name("hellaswag.yaml"))
    assert config["task"] == "hellaswag" and config["output_type"] == "multiple_choice"
    config["custom_dataset"] = lambda **kwargs: datasets.DatasetDict({"validation": datasets.Dataset.from_list(records)})
    config["training_split"] = None  # the records are the validation split only
    return ConfigurableTask(config=config)
