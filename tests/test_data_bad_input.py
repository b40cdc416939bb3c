"""Every kind of bad data input named in the issue gives a clear message (file, row, field) and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.config.base import OptionError, WorkbenchError
from workbench.config.data import DataArgs
from workbench.data import inspect as di
from workbench.data.loader import load_records, load_spec
from workbench.data.registry import get_spec, load_registry, save_entry


def registry(tmp_path: Path, files: dict[str, str], info: dict) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path


def load(tmp_path: Path, name: str):
    return load_records(DataArgs(dataset=name, dataset_dir=str(tmp_path)), log=lambda m: None)


def test_malformed_json_array_names_file_and_line(tmp_path):
    registry(tmp_path, {"d.json": '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]'},
             {"d": {"file_name": "d.json"}})
    with pytest.raises(WorkbenchError, match=r"d\.json line 3 column 23: not valid JSON \(Expecting ',' delimiter\)"):
        load(tmp_path, "d")


def test_malformed_dataset_info_names_its_line(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "a.json"},\n  "b": \n}')
    with pytest.raises(WorkbenchError, match=r"dataset_info.json line 4 column 1: not valid JSON"):
        load_registry(tmp_path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    registry(tmp_path, {"d.jsonl": '{"instruction": "a", "output": "b"}\n["c", "d"]\n'},
             {"d": {"file_name": "d.jsonl"}})
    with pytest.raises(WorkbenchError, match=r"d\.jsonl line 2: expected a JSON object, got list"):
        load(tmp_path, "d")


def test_misspelt_column_is_named_with_the_file_columns(tmp_path):
    registry(tmp_path, {"d.json": json.dumps([{"question": "a", "answer": "b"}])},
             {"d": {"file_name": "d.json", "columns": {"prompt": "questoin", "response": "answer"}}})
    with pytest.raises(WorkbenchError) as err:
        load(tmp_path, "d")
    assert "column(s) not found: prompt → 'questoin'" in str(err.value)
    assert "the file has: question, answer" in str(err.value)


def test_missing_default_prompt_column(tmp_path):
    registry(tmp_path, {"d.json": json.dumps([{"question": "a", "answer": "b"}])}, {"d": {"file_name": "d.json"}})
    with pytest.raises(WorkbenchError, match=r"the prompt column 'instruction' was not found; the file has: "
                                             r"question, answer"):
        load(tmp_path, "d")


def test_empty_prompts_and_responses_are_counted_and_skipped(tmp_path):
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "", "output": "a2"},
            {"instruction": "q3", "output": "  "}, {"instruction": "q4", "output": ""},
            {"instruction": "q5", "output": "a5"}]
    registry(tmp_path, {"d.json": json.dumps(rows)}, {"d": {"file_name": "d.json"}})
    logs: list[str] = []
    records = load_records(DataArgs(dataset="d", dataset_dir=str(tmp_path)), log=logs.append)
    assert [r.messages[0]["content"] for r in records] == ["q1", "q5"]
    (warning,) = logs
    assert "skipped 3 of 5 rows" in warning
    assert "2 × empty response (first: d.json row 3)" in warning and "1 × empty prompt (first: d.json row 2)" in warning
    # Nothing usable at all is an error, with the reasons.
    registry(tmp_path, {"e.json": json.dumps(rows[1:4])}, {"e": {"file_name": "e.json"}})
    with pytest.raises(WorkbenchError, match=r"none of the 3 rows is usable: 2 × empty response"):
        load(tmp_path, "e")


@pytest.mark.parametrize("history,shown", [
    ("hi then hello", "'hi then hello'"),
    ([["hi", "hello", "extra"]], "[['hi', 'hello', 'extra']]"),
    (["hi", "hello"], "['hi', 'hello']"),
])
def test_history_not_a_list_of_pairs(tmp_path, history, shown):
    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": "a", "history": history}]
    registry(tmp_path, {"d.json": json.dumps(rows)}, {"d": {"file_name": "d.json"}})
    with pytest.raises(WorkbenchError) as err:
        load(tmp_path, "d")
    assert str(err.value) == f"d.json row 2: history must be a list of [user, assistant] pairs, got {shown}"


def test_other_wrong_types(tmp_path):
    registry(tmp_path, {
        "s.json": json.dumps([{"conversations": "human: hi"}]),
        "t.json": json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                               "tools": "[{not json"}]),
        "k.json": json.dumps([{"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "yo"}], "label": "maybe"}]),
        "r.json": json.dumps([{"instruction": "q", "output": "only one answer"}]),
        "p.json": json.dumps([{"instruction": {"text": "q"}, "output": "a"}]),
    }, {
        "s": {"file_name": "s.json", "formatting": "sharegpt"},
        "t": {"file_name": "t.json", "formatting": "sharegpt"},
        "k": {"file_name": "k.json", "formatting": "openai", "columns": {"kto_tag": "label"}},
        "r": {"file_name": "r.json", "ranking": True},
        "p": {"file_name": "p.json"},
    })
    cases = {
        "s": r"s\.json row 1: conversations must be a list of messages, got 'human: hi'",
        "t": r"t\.json row 1: tools: tools is not valid JSON",
        "k": r"k\.json row 1: label must be true or false, got 'maybe'",
        "r": r"r\.json row 1: output of a ranking dataset must be a list \[chosen, rejected\]",
        "p": r"p\.json row 1: instruction must be text, got dict",
    }
    for name, pattern in cases.items():
        with pytest.raises(WorkbenchError, match=pattern):
            load(tmp_path, name)


def test_sharegpt_wrong_tags_say_which_key_is_missing(tmp_path):
    rows = [{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    registry(tmp_path, {"d.json": json.dumps(rows)}, {"d": {"file_name": "d.json", "formatting": "sharegpt"}})
    with pytest.raises(WorkbenchError, match=r"d\.json row 1: a message in conversations has no 'from' key "
                                             r"\(keys: role, content\); set tags.role_tag"):
        load(tmp_path, "d")


def test_unknown_formatting_and_template(tmp_path, bundled_model_dir):
    from transformers import AutoTokenizer

    from workbench.data.loader import build_dataset

    registry(tmp_path, {"d.json": "[]"}, {"d": {"file_name": "d.json", "formatting": "sharegpt4"}})
    with pytest.raises(WorkbenchError, match=r"dataset_info.json: dataset 'd': unknown formatting 'sharegpt4'; "
                                             r"choose from alpaca, sharegpt, openai"):
        load(tmp_path, "d")
    registry(tmp_path, {"d.json": json.dumps([{"instruction": "q", "output": "a"}])}, {"d": {"file_name": "d.json"}})
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    with pytest.raises(WorkbenchError, match="unknown template 'chatlm'; choose from: auto, qwen, chatml"):
        build_dataset(DataArgs(dataset="d", dataset_dir=str(tmp_path), template="chatlm"), tokenizer, "sft")


def test_unknown_dataset_and_bad_options(tmp_path):
    registry(tmp_path, {}, {"identity": {"file_name": "identity.json"}})
    with pytest.raises(WorkbenchError, match=r"dataset 'identiy' is not in .*dataset_info.json; registered: identity"):
        load(tmp_path, "identiy")
    with pytest.raises(WorkbenchError, match=r"dataset 'identity': file .*identity.json not found"):
        load(tmp_path, "identity")
    with pytest.raises(OptionError, match="val_size: with streaming, give a number of rows"):
        DataArgs(dataset="x", streaming=True, val_size=0.1)
    with pytest.raises(OptionError, match="cutoff_len: 2 is below the minimum 8"):
        DataArgs(cutoff_len=2)


def test_duplicate_name_on_save_overwrites_nothing(tmp_path):
    registry(tmp_path, {"a.json": json.dumps([{"instruction": "q", "output": "a"}])},
             {"a": {"file_name": "a.json"}})
    before = (tmp_path / "dataset_info.json").read_bytes()
    with pytest.raises(WorkbenchError, match="a dataset named 'a' already exists"):
        save_entry(tmp_path, "a", {"file_name": "a.json", "formatting": "sharegpt"})
    source = di.open_upload(tmp_path / "a.json")
    with pytest.raises(WorkbenchError, match="a dataset named 'a' already exists"):
        di.register(tmp_path, "a", source, {"file_name": "a.json"})
    assert (tmp_path / "dataset_info.json").read_bytes() == before
    assert not (tmp_path / "dataset_info.json.bak").exists()
    # An invalid entry is refused before anything is written.
    with pytest.raises(WorkbenchError, match="unknown formatting 'csv'"):
        save_entry(tmp_path, "b", {"file_name": "a.json", "formatting": "csv"})
    assert (tmp_path / "dataset_info.json").read_bytes() == before


def test_register_checks_the_mapping_and_keeps_other_entries(tmp_path):
    registry(tmp_path, {"a.json": "[]"}, {"a": {"file_name": "a.json"}})
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    (upload_dir / "new.jsonl").write_text(json.dumps({"q": "hi", "a": "yo"}) + "\n")
    source = di.open_upload(upload_dir / "new.jsonl")
    with pytest.raises(WorkbenchError, match=r"column\(s\) not found: prompt → 'question'; the file has: q, a"):
        di.register(tmp_path, "new", source, {"file_name": "new.jsonl", "columns": {"prompt": "question"}})
    assert not (tmp_path / "new.jsonl").exists()
    di.register(tmp_path, "new", source, {"file_name": "new.jsonl", "columns": {"prompt": "q", "response": "a"}})
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert list(info) == ["a", "new"] and info["new"]["file_name"] == "new.jsonl"
    assert len(load_spec(get_spec("new", tmp_path)).records) == 1


@pytest.mark.parametrize("name,content,message", [
    ("image.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file (it contains binary data)"),
    ("latin1.csv", "instruction,output\ncaf\xe9,ok\n".encode("latin-1"), "not UTF-8 text (bad byte at offset"),
    ("fake.parquet", b"instruction,output\n", "not a parquet file"),
    ("notes.docx", b"PK\x03\x04", "unsupported file type '.docx'"),
    ("empty.jsonl", b"\n\n", "the file holds no rows"),
])
def test_uploads_that_are_not_usable_text(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WorkbenchError) as err:
        di.open_upload(path)
    assert message in str(err.value) and (name in str(err.value) or "empty" in name)


def test_cli_reports_bad_data_without_traceback(cli, tmp_path):
    registry(tmp_path, {"good.json": json.dumps([{"instruction": "q", "output": "a"}]),
                        "bad.json": '[{"instruction": "q", "output": "a"},]'},
             {"good": {"file_name": "good.json"}, "bad": {"file_name": "bad.json"}})
    result = cli("data", "check", "--dataset-dir", str(tmp_path), "good", "bad")
    assert result.returncode == 1
    assert "bad.json line 1 column 38: not valid JSON" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    result = cli("data", "check", "--dataset-dir", str(tmp_path), "good")
    assert result.returncode == 0 and "alpaca/sft" in result.stdout
    result = cli("data", "preview", "good", "--dataset-dir", str(tmp_path), "--template", "nope")
    assert result.returncode == 1 and "error: unknown template 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("data", "convert", "--task", "squad_v2", "--input", str(tmp_path / "missing.json"), "--output",
                 str(tmp_path / "o.json"))
    assert result.returncode == 1 and "missing.json: file not found" in result.stderr
