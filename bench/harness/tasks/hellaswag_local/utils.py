"""lm-eval 0.4.13's hellaswag task over a local JSONL file, using the harness's own functions.

Documents in the reduced form (`ctx` only) are given the official fields first (ctx_a = ctx, ctx_b = ""), then
handed to upstream's `process_docs` unchanged, so the query and choices are exactly the harness's.
"""

import os

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as upstream_process_docs

ENV_VAR = "HELLASWAG_JSONL"


def _official_form(doc):
    if doc.get("ctx_a") is not None:
        return {"ctx_a": doc["ctx_a"], "ctx_b": doc.get("ctx_b") or ""}
    return {"ctx_a": doc["ctx"], "ctx_b": ""}


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return upstream_process_docs(dataset.map(_official_form))


def load_local(data_path=None, **kwargs):
    """custom_dataset hook: the local JSONL as a DatasetDict with one 'validation' split.

    kwargs are the task metadata (e.g. version) and dataset_kwargs; ignored.
    """
    path = data_path or os.environ.get(ENV_VAR)
    if not path:
        raise ValueError(
            f"hellaswag_local: set {ENV_VAR}=/path/to/hellaswag_val.jsonl "
            "or pass --metadata '{\"data_path\": \"/path/to/file.jsonl\"}'"
        )
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return datasets.load_dataset("json", data_files={"validation": path})
