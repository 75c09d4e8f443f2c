"""Every input verified before use: files against the manifest's sha256, dataset fields by type, with the line.

Each case is a fault a user met (issue 14): it must end in one `error:` line and exit 1, never a wrong result.
"""

from __future__ import annotations

import json

import pytest
from helpers import copy_engines, fails_cleanly

from cetrt.cli import build_command, run_command
from cetrt.errors import UserError
from cetrt.workload.hellaswag import load_docs

GOOD = {"ind": 0, "activity_label": "Sports", "ctx_a": "A man runs.", "ctx_b": "he jumps",
        "endings": ["a", "b", "c", "d"], "label": 2}


def _jsonl(tmp_path, lines: list[bytes]):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _swap_token_ids(path) -> None:
    """Exchange the ids of two vocabulary entries with ids of equal length: the file keeps its exact size."""
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    (a, ida), (b, idb) = [(t, i) for t, i in vocab.items() if 100 <= i < 1000 and t.isascii() and t.isalpha()][:2]
    text = path.read_text(encoding="utf-8")
    one, two = f'"{a}": {ida},', f'"{b}": {idb},'
    assert text.count(one) == 1 and text.count(two) == 1
    text = text.replace(one, "\0").replace(two, f'"{b}": {ida},').replace("\0", f'"{a}": {idb},')
    size = path.stat().st_size
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size == size


def test_tokenizer_with_two_token_ids_swapped_is_refused(zoo, hellaswag_path, tmp_path):
    """Issue 14: this ran with exit 0 and changed 7 of 20 scores; only the size was compared."""
    engines = copy_engines(zoo.engines("llama"), tmp_path / "engines")
    _swap_token_ids(engines / "tokenizer" / "tokenizer.json")
    out = fails_cleanly(run_command, ["--engines", engines, "--dataset", hellaswag_path, "--limit", "2"], "sha256")
    assert "tokenizer.json" in out and "make engines" in out


def _calibrated_engines(zoo, tmp_path):
    """The zoo's export with a calib.json of its own (written as the calibration writes it), built."""
    import shutil

    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.formats.blocks import read_blocks
    from cetrt.formats.calib import CalibRecord, write_calib

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(zoo.onnx("llama"), onnx_dir)
    exported = read_blocks(onnx_dir)
    write_calib(onnx_dir, CalibRecord.for_export(exported, "test", {"islands": []},
                                                 {"target": "cpu", "skipped": "test"}, {"note": "defaults", "tokens_per_batch": 512}))
    build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=tmp_path / "engines"))
    return tmp_path / "engines"


def test_calib_json_beside_the_engines_edited_is_refused(zoo, hellaswag_path, tmp_path):
    engines = _calibrated_engines(zoo, tmp_path)
    calib = engines / "calib.json"
    text = calib.read_text()
    assert '"tokens_per_batch": 512' in text
    calib.write_text(text.replace('"tokens_per_batch": 512', '"tokens_per_batch": 999'))  # same size
    out = fails_cleanly(run_command, ["--engines", engines, "--dataset", hellaswag_path, "--limit", "2"], "sha256")
    assert "calib.json" in out


def test_an_onnx_file_edited_after_the_export_is_refused_by_the_build(zoo, tmp_path):
    import shutil

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(zoo.onnx("llama"), onnx_dir)
    onnx = next(onnx_dir.glob("block_001.onnx"))
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    onnx.write_bytes(bytes(raw))
    fails_cleanly(build_command, ["--onnx", onnx_dir, "--out", tmp_path / "engines"], "sha256")


@pytest.mark.parametrize("label", [2.7, 2.0, "2.5", True, None, -1, 4])
def test_a_label_that_is_not_an_integer_0_to_3_is_refused_not_truncated(tmp_path, label):
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), json.dumps({**GOOD, "label": label}).encode()])
    with pytest.raises(UserError, match=r"data\.jsonl:2: .*label"):
        load_docs(path)


def test_a_label_given_as_digits_is_read(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({**GOOD, "label": "3"}).encode()])
    assert load_docs(path)[0].label == 3


@pytest.mark.parametrize("ind, kept", [(7, 7), ("val-00007", "val-00007")])
def test_ind_is_kept_as_given(tmp_path, ind, kept):
    path = _jsonl(tmp_path, [json.dumps({**GOOD, "ind": ind}).encode()])
    assert load_docs(path)[0].ind == kept


@pytest.mark.parametrize("ind", [1.5, [1], {"a": 1}, True])
def test_an_ind_that_is_not_an_integer_or_string_is_refused(tmp_path, ind):
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), json.dumps({**GOOD, "ind": ind}).encode()])
    with pytest.raises(UserError, match=r"data\.jsonl:2: 'ind' must be an integer or a string"):
        load_docs(path)


def test_a_non_utf8_byte_is_named_by_line(tmp_path):
    bad = json.dumps(GOOD).encode().replace(b"Sports", b"Sp\xffrts")
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), json.dumps(GOOD).encode(), bad])
    with pytest.raises(UserError, match=r"data\.jsonl:3: not UTF-8 \(byte 0xff"):
        load_docs(path)


def test_dataset_faults_through_the_cli_are_one_line(zoo, tmp_path):
    bad = json.dumps(GOOD).encode().replace(b"Sports", b"Sp\xffrts")
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), bad])
    fails_cleanly(run_command, ["--engines", zoo.engines("llama"), "--dataset", path], "data.jsonl:2: not UTF-8")
    path = _jsonl(tmp_path, [json.dumps({**GOOD, "ind": 1.5}).encode()])
    fails_cleanly(run_command, ["--engines", zoo.engines("llama"), "--dataset", path], "data.jsonl:1: 'ind'")


def test_an_item_too_long_for_the_model_is_named(zoo, tmp_path):
    long_doc = {**GOOD, "ind": "the-long-one", "ctx_a": "word " * 3000}
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), json.dumps(long_doc).encode()])
    out = fails_cleanly(run_command, ["--engines", zoo.engines("llama"), "--dataset", path], "'the-long-one'")
    assert "document 2" in out


def test_a_tokenizer_json_missing_a_token_is_one_line_at_export(zoo, tmp_path):
    """A merge that names a token the vocabulary lacks: tokenizers cannot build it; the export says so."""
    import shutil

    from cetrt.cli import export_command

    model = tmp_path / "model"
    shutil.copytree(zoo.model("llama"), model)
    path = model / "tokenizer.json"
    data = json.loads(path.read_text())
    merges = data["model"]["merges"]
    merged = "".join(merges[0]) if isinstance(merges[0], list) else merges[0].replace(" ", "")
    del data["model"]["vocab"][merged]
    path.write_text(json.dumps(data))
    fails_cleanly(export_command, ["--model", model, "--out", tmp_path / "onnx", "--dtype", "float32"], "tokenizer")


def test_a_tokenizer_json_missing_a_token_beside_the_engines_is_refused(zoo, hellaswag_path, tmp_path):
    engines = copy_engines(zoo.engines("llama"), tmp_path / "engines")
    path = engines / "tokenizer" / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["vocab"].pop(next(iter(data["model"]["vocab"])))
    path.write_text(json.dumps(data))
    fails_cleanly(run_command, ["--engines", engines, "--dataset", hellaswag_path, "--limit", "2"], "tokenizer")
