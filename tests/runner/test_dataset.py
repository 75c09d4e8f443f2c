"""Dataset loading: the whole shared file, both forms, a local dataset through `datasets`, and bad input."""

from __future__ import annotations

import json

import pytest

from cetrt.errors import UserError
from cetrt.workload.hellaswag import load_docs, query


def test_all_10042_items_of_the_shared_file_load(hellaswag_path):
    docs = load_docs(hellaswag_path)
    assert len(docs) == 10042
    assert [d.ind for d in docs[:3]] == [0, 1, 2] and docs[-1].ind == 10041
    assert all(len(d.endings) == 4 and 0 <= d.label < 4 for d in docs)
    assert docs[0].ctx_b == ""  # reduced form: ctx only


def test_limit_reads_only_the_first_items(hellaswag_path):
    assert [d.ind for d in load_docs(hellaswag_path, limit=5)] == [0, 1, 2, 3, 4]


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = {"ind": 0, "activity_label": "Sports", "ctx_a": "A man runs.", "ctx_b": "he jumps", "endings": ["a", "b", "c", "d"], "label": 2}


def test_official_form_capitalises_ctx_b(tmp_path):
    docs = load_docs(_write(tmp_path, [json.dumps(GOOD)]))
    assert query(docs[0]) == "Sports: A man runs. He jumps"


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"data\.jsonl:2: not valid JSON"),
    (json.dumps({**GOOD, "endings": ["a", "b"]}), r"data\.jsonl:2: 'endings' must be a list of 4"),
    (json.dumps({**GOOD, "label": 7}), r"data\.jsonl:2: label 7 is outside"),
    (json.dumps({k: v for k, v in GOOD.items() if k not in ("ctx_a", "ctx_b")}), r"data\.jsonl:2: no 'ctx'"),
])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, [json.dumps(GOOD), bad])
    with pytest.raises(UserError, match=message):
        load_docs(path)


def test_a_missing_path_says_so(tmp_path):
    with pytest.raises(UserError, match="no such dataset file"):
        load_docs(tmp_path / "nope.jsonl")


def test_a_local_dataset_directory_loads_through_datasets(tmp_path):
    """The hub-id path (`datasets.load_dataset`, validation split), on a local folder in the hub's layout."""
    folder = tmp_path / "hellaswag"
    folder.mkdir()
    rows = [{**GOOD, "ind": i, "label": str(i % 4)} for i in range(6)]  # the hub stores label as a string
    (folder / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = load_docs(str(folder), limit=4)
    assert [d.label for d in docs] == [0, 1, 2, 3]


def test_an_unreachable_hub_id_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load dataset"):
        load_docs("Rowan/hellaswag-does-not-exist")
