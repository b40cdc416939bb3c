"""Data problems found by probing: a bad byte past the first 64 KiB, conversation turns with unusual role and
content keys, empty files, and a file that is one JSON object. Built from LLaMA-Factory's public demo files."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import pytest

from workbench.config.base import WorkbenchError
from workbench.config.data import DataArgs
from workbench.data import inspect as di
from workbench.data.formats import detect_format, detect_turn_tags
from workbench.data.files import _first_bad_utf8
from workbench.data.files import peek_rows
from workbench.data.loader import build_dataset, load_records, load_spec
from workbench.data.registry import get_spec


@pytest.fixture(scope="module")
def alpaca_rows(shared_data) -> list[dict]:
    return json.loads((shared_data / "llamafactory" / "alpaca_en_demo.json").read_text(encoding="utf-8"))


def register(folder: Path, files: dict[str, bytes | str], info: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def load(folder: Path, name: str, **kw):
    return load_records(DataArgs(dataset=name, dataset_dir=str(folder), **kw), log=lambda m: None)


# ---- A: a byte that is not UTF-8, anywhere in the file ------------------------------------------

def _as_bytes(kind: str, rows: list[dict], shared_data: Path) -> bytes:
    if kind == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2).encode("utf-8")
    if kind == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if kind == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["instruction", "input", "output"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode("utf-8")
    return (shared_data / "llamafactory" / "wiki_demo.txt").read_bytes()


def _with_latin1_byte(data: bytes, after: int = 100_000) -> tuple[bytes, int, int]:
    """A Latin-1 'é' (0xe9) put into the text past ``after``: (data, byte offset, line number)."""
    pos = data.index(b" the ", after) + 1
    return data[:pos] + b"\xe9" + data[pos:], pos, data[:pos].count(b"\n") + 1


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "txt"])
def test_bad_byte_after_64k_is_named_by_every_reader(kind, alpaca_rows, shared_data, tmp_path):
    data, offset, line = _with_latin1_byte(_as_bytes(kind, alpaca_rows, shared_data))
    assert offset > 65536
    entry = {"file_name": f"d.{kind}"} if kind != "txt" else {"file_name": "d.txt", "columns": {"prompt": "text"}}
    folder = register(tmp_path / "reg", {f"d.{kind}": data}, {"d": entry})
    expected = f"d.{kind} line {line}: not UTF-8 text (bad byte at offset {offset}: 0xe9)"
    # data check / data preview (load_spec), training (load_records) and the Data tab (peek_rows, open_upload).
    with pytest.raises(WorkbenchError, match=re.escape(expected)):
        load_spec(get_spec("d", folder))
    # Reading only the first rows must not go on as if the file were fine (it did, with fewer rows).
    for call in (lambda: load(folder, "d", max_samples=3), lambda: peek_rows(folder / f"d.{kind}", 5),
                 lambda: di.open_upload(folder / f"d.{kind}"), lambda: di.open_registered(folder, "d")):
        with pytest.raises(WorkbenchError) as err:
            call()
        assert expected in str(err.value)


def test_cli_check_and_preview_report_the_bad_byte_without_traceback(cli, alpaca_rows, shared_data, tmp_path):
    data, offset, line = _with_latin1_byte(_as_bytes("jsonl", alpaca_rows, shared_data))
    folder = register(tmp_path / "reg", {"d.jsonl": data}, {"d": {"file_name": "d.jsonl"}})
    expected = f"d.jsonl line {line}: not UTF-8 text (bad byte at offset {offset}: 0xe9)"
    result = cli("data", "check", "--dataset-dir", str(folder), "d")
    assert result.returncode == 1 and expected in result.stdout
    result = cli("data", "preview", "d", "--dataset-dir", str(folder), "--max-samples", "5")
    assert result.returncode == 1 and expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_streaming_training_refuses_the_file_before_it_starts(alpaca_rows, shared_data, bundled_model_dir,
                                                              tmp_path, wb_home):
    from transformers import AutoTokenizer

    data, offset, line = _with_latin1_byte(_as_bytes("jsonl", alpaca_rows, shared_data))
    folder = register(tmp_path / "reg", {"d.jsonl": data}, {"d": {"file_name": "d.jsonl"}})
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    args = DataArgs(dataset="d", dataset_dir=str(folder), streaming=True, max_samples=4)
    with pytest.raises(WorkbenchError, match=f"line {line}: not UTF-8 text \\(bad byte at offset {offset}"):
        build_dataset(args, tokenizer, "sft")


def test_the_datasets_path_names_the_row_instead_of_reading_on(alpaca_rows, shared_data, tmp_path, monkeypatch):
    """Hub datasets are read by `datasets`, which keeps a bad byte in its Arrow cache and fails (with a bare
    UnicodeDecodeError) only when that row is read: after the rows before it were used."""
    import datasets

    from workbench.data import loader
    from workbench.data.registry import spec_from_entry

    data, _, _ = _with_latin1_byte(_as_bytes("jsonl", alpaca_rows, shared_data))
    row = data[:data.index(b"\xe9")].count(b"\n") + 1
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.jsonl").write_bytes(data)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(loader, "hub_cached", lambda spec: True)  # a local folder stands in for a cached hub repo
    spec = spec_from_entry("h", {"hf_hub_url": str(tmp_path / "hub")}, tmp_path)
    expected = f"dataset 'h' ({tmp_path / 'hub'}) row {row}: not UTF-8 text (bad byte at offset"
    with pytest.raises(WorkbenchError) as err:
        load_spec(spec, max_samples=3)
    assert expected in str(err.value)
    with pytest.raises(WorkbenchError) as err:  # streaming: named when reached
        for _ in loader.spec_rows(spec, streaming=True):
            pass
    assert expected in str(err.value)


def test_bad_byte_position_across_read_chunks(tmp_path):
    rng = random.Random(0)
    chars = "".join(rng.choice(["a", "\n", "é", "中", "😀", " "]) for _ in range(300))
    text = chars.encode("utf-8")
    path = tmp_path / "t.txt"
    for k in (0, 1, 57, 150, 299, 300):  # a bad byte between characters, multi-byte ones split by the chunks
        pos = len(chars[:k].encode("utf-8"))
        bad = text[:pos] + b"\xff" + text[pos:]
        path.write_bytes(bad)
        for chunk in (1, 2, 3, 5, 64, 1 << 20):
            assert _first_bad_utf8(path, chunk) == (pos, bad[:pos].count(b"\n") + 1, 0xFF), (pos, chunk)
    path.write_bytes(text + "中".encode("utf-8")[:2])  # cut in the middle of a character
    assert _first_bad_utf8(path, 4) == (len(text), text.count(b"\n") + 1, 0xE4)
    path.write_bytes(text)
    assert _first_bad_utf8(path, 7) is None


# ---- C: empty files, and a file that is one JSON object -----------------------------------------

@pytest.mark.parametrize("name", ["d.json", "d.jsonl", "d.csv"])
def test_a_zero_byte_file_is_called_empty(name, tmp_path, cli):
    folder = register(tmp_path / "reg", {name: b""}, {"d": {"file_name": name}})
    with pytest.raises(WorkbenchError, match=rf"{name.replace('.', '[.]')}: the file is empty \(0 bytes\)"):
        load(folder, "d")
    with pytest.raises(WorkbenchError, match=r"the file is empty \(0 bytes\)"):
        di.open_upload(folder / name)
    if name == "d.json":
        result = cli("data", "check", "--dataset-dir", str(folder), "d")
        assert result.returncode == 1 and "the file is empty (0 bytes)" in result.stdout
        assert "prompt column" not in result.stdout


@pytest.mark.parametrize("name,content", [("d.jsonl", "\n  \n\n"), ("d.json", "[]"), ("d.json", '{"data": []}')])
def test_a_file_without_rows_says_so(name, content, tmp_path):
    folder = register(tmp_path / "reg", {name: content}, {"d": {"file_name": name}})
    with pytest.raises(WorkbenchError) as err:
        load(folder, "d")
    assert "holds no rows" in str(err.value) and "prompt column" not in str(err.value)


@pytest.mark.parametrize("indent", [None, 2])
def test_one_object_holding_the_row_list_is_read_with_a_note(indent, alpaca_rows, tmp_path, cli):
    rows = alpaca_rows[:7]
    folder = register(tmp_path / "reg", {"d.json": json.dumps({"data": rows}, indent=indent)},
                      {"d": {"file_name": "d.json"}})
    loaded = load_spec(get_spec("d", folder))
    assert [r.messages[-1]["content"] for r in loaded.records] == [r["output"] for r in rows]
    assert loaded.columns == ["instruction", "input", "output"]
    (note,) = loaded.warnings()
    assert "d.json is one JSON object; its rows were read from its only key 'data' (7 rows)" in note
    source = di.open_upload(folder / "d.json")
    assert source.columns == ["instruction", "input", "output"] and source.columns_map["prompt"] == "instruction"
    assert any("only key 'data'" in n for n in source.notes)
    result = cli("data", "check", "--dataset-dir", str(folder), "d")
    assert result.returncode == 0 and "only key 'data'" in result.stdout
    # A bad row inside is named by its place in the list.
    rows = [*rows[:2], {"instruction": ["not", "text"], "output": "x"}]
    (folder / "d.json").write_text(json.dumps({"data": rows}))
    with pytest.raises(WorkbenchError, match=r"d\.json row 3 \(in 'data'\): instruction must be text"):
        load(folder, "d")


def test_other_single_objects_are_refused_with_their_keys(shared_data, alpaca_rows, tmp_path):
    squad = shared_data / "eval" / "squad_v2_dev_2articles.json"  # official SQuAD: {"version", "data"}
    with pytest.raises(WorkbenchError) as err:
        peek_rows(squad)
    assert str(err.value).startswith(f"{squad}: the file is one JSON object (keys: 'version', 'data'), not a list")
    assert "data convert --task squad_v2" in str(err.value)
    row = alpaca_rows[0]
    folder = register(tmp_path / "reg", {"one.json": json.dumps(row), "one.jsonl": json.dumps(row) + "\n",
                                         "pretty.jsonl": json.dumps(row, indent=2)},
                      {"one": {"file_name": "one.json"}, "line": {"file_name": "one.jsonl"},
                       "pretty": {"file_name": "pretty.jsonl"}})
    for name in ("one", "pretty"):
        with pytest.raises(WorkbenchError, match=r"the file is one JSON object \(keys: 'instruction', 'input', "
                                                 r"'output'\), not a list of rows"):
            load(folder, name)
    # A .jsonl file of one line is JSON lines with one row, as always.
    (record,) = load(folder, "line")
    assert record.messages[-1]["content"] == row["output"]


# ---- B: role and content keys and role values, detected -------------------------------------------

def _speaker_rows(alpaca_rows: list[dict], n: int = 6, user: str = "user", bot: str = "bot",
                  role_key: str = "speaker", text_key: str = "text") -> list[dict]:
    return [{"dialog": [{role_key: user, text_key: r["instruction"]}, {role_key: bot, text_key: r["output"]}]}
            for r in alpaca_rows[:n]]


def test_speaker_text_turns_are_detected_and_save_and_load(alpaca_rows, tmp_path):
    rows = _speaker_rows(alpaca_rows)
    upload = tmp_path / "up" / "chat.jsonl"
    upload.parent.mkdir()
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = di.open_upload(upload)
    assert (source.formatting, source.columns_map) == ("sharegpt", {"messages": "dialog"})
    assert source.tags == {"role_tag": "speaker", "content_tag": "text", "user_tag": "user", "assistant_tag": "bot"}
    # What the Data tab does on Save: the fields as filled from the detection.
    columns = di.effective_columns(source.formatting, source.columns_map, source.columns)
    entry = di.make_entry(upload.name, source.formatting, source.ranking, columns, source.tags)
    folder = tmp_path / "reg"
    di.register(folder, "chat", source, entry)
    saved = json.loads((folder / "dataset_info.json").read_text())["chat"]
    assert saved["tags"] == source.tags
    records = load(folder, "chat")
    assert [[m["role"] for m in r.messages] for r in records] == [["user", "assistant"]] * len(rows)
    assert records[0].messages[1]["content"] == alpaca_rows[0]["output"]


def test_unknown_role_names_are_guessed_by_order_or_reported():
    alice = [{"who": "Alice", "says": "Where is the station?"}, {"who": "Bob", "says": "Two streets north."},
             {"who": "Alice", "says": "Thanks!"}, {"who": "Bob", "says": "You are welcome."}]
    found = detect_turn_tags(alice)
    assert found["tags"] == {"role_tag": "who", "content_tag": "says", "user_tag": "Alice", "assistant_tag": "Bob"}
    assert "guessed from the order of the turns" in found["notes"][0]
    notes: list[str] = []
    entry = detect_format(["dialog"], [{"dialog": alice + [{"who": "SYSTEM", "says": "be nice"}]}], notes)
    assert entry["tags"]["system_tag"] == "SYSTEM" and entry["tags"]["user_tag"] == "Alice"
    narrator = [{"speaker": "User", "text": "hi"}, {"speaker": "Bot", "text": "hello"},
                {"speaker": "narrator", "text": "(they wave)"}]
    found = detect_turn_tags(narrator)
    assert found["tags"]["user_tag"] == "User" and found["tags"]["assistant_tag"] == "Bot"
    assert found["unmapped"] == ["narrator"] and "'narrator' match no role tag" in found["notes"][0]


def test_wrong_role_tags_say_what_is_wrong(alpaca_rows, tmp_path):
    rows = _speaker_rows(alpaca_rows, 3)
    openai_rows = [{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    folder = register(tmp_path / "reg", {"c.json": json.dumps(rows), "o.json": json.dumps(openai_rows)}, {
        "untagged": {"file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "dialog"}},
        "role_only": {"file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                      "tags": {"role_tag": "speaker"}},
        "keys_only": {"file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                      "tags": {"role_tag": "speaker", "content_tag": "text"}},
        "openai": {"file_name": "o.json", "formatting": "sharegpt"},
    })
    detected = "role_tag='speaker', content_tag='text', user_tag='user', assistant_tag='bot'"
    with pytest.raises(WorkbenchError) as err:
        load(folder, "untagged")
    assert "c.json row 1: a message in dialog has no 'from' key (keys: speaker, text)" in str(err.value)
    assert detected in str(err.value)
    # A wrong content key was counted as "empty message" and every row skipped; now it is named.
    with pytest.raises(WorkbenchError) as err:
        load(folder, "role_only")
    assert "has no 'value' key (keys: speaker, text)" in str(err.value) and detected in str(err.value)
    with pytest.raises(WorkbenchError) as err:
        load(folder, "keys_only")
    assert "3 × unknown role 'user' (role tags: user_tag='human', assistant_tag='gpt'" in str(err.value)
    with pytest.raises(WorkbenchError, match="look like OpenAI messages: choose formatting openai"):
        load(folder, "openai")
    # Opening the registered entry in the Data tab keeps it as registered and says what does not fit.
    source = di.open_registered(folder, "untagged")
    assert source.tags == {}
    (note,) = source.notes
    assert "role_tag is 'from', content_tag is 'value'" in note and "role_tag='speaker'" in note


def test_detection_keeps_the_llamafactory_defaults(shared_data):
    """Files in the default spellings get no explicit tags (the fields stay empty, showing the defaults)."""
    for name in ("glaive_toolcall_en_demo.json", "dpo_en_demo.json"):
        rows = json.loads((shared_data / "llamafactory" / name).read_text(encoding="utf-8"))[:20]
        notes: list[str] = []
        entry = detect_format(list(rows[0]), rows, notes)
        assert entry["formatting"] == "sharegpt" and "tags" not in entry and notes == [], name


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.expect_timeout(60_000)
def test_data_tab_fills_role_tags_and_explains_a_failed_open(page, alpaca_rows, tmp_path):
    from playwright.sync_api import expect

    folder = tmp_path / "reg"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    upload = tmp_path / "chat.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in _speaker_rows(alpaca_rows, 4)))
    page.get_by_role("tab", name="Data").click()
    box = page.locator("#wb-data-dir textarea, #wb-data-dir input").first
    box.fill(str(folder))
    box.press("Enter")
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("No dataset_info.json with datasets")  # the folder is read before the upload
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(upload))
    expect(status).to_contain_text("upload chat.jsonl")
    expect(status).to_contain_text("Role tags")
    for key, value in (("role_tag", "speaker"), ("content_tag", "text"), ("user_tag", "user"),
                       ("assistant_tag", "bot")):
        field = page.locator(f"#wb-data-tag-{key} textarea, #wb-data-tag-{key} input").first
        expect(field).to_be_visible()  # the panel is opened, not left for an error message to point at
        expect(field).to_have_value(value)
    page.locator("#wb-data-preview").click()
    expect(status).to_contain_text("4 examples", timeout=60_000)
    page.locator("#wb-data-name textarea, #wb-data-name input").first.fill("chat")
    page.locator("#wb-data-save").click()
    save_status = page.locator("#wb-data-save-status")
    expect(save_status).to_contain_text("wherever datasets are picked (the previous dataset_info.json is kept as "
                                         "dataset_info.json.bak): chat", timeout=30_000)
    assert json.loads((folder / "dataset_info.json").read_text())["chat"]["tags"]["role_tag"] == "speaker"

    # A file that cannot be opened: Save says which and why, not "open a file first".
    page.locator("#wb-data-upload button[aria-label='Clear']").first.click()
    broken = tmp_path / "latin1.jsonl"
    broken.write_bytes(b'{"instruction": "caf\xe9", "output": "ok"}\n')
    offset = broken.read_bytes().index(b"\xe9")
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(broken))
    expect(status).to_contain_text("not UTF-8 text")
    page.locator("#wb-data-name textarea, #wb-data-name input").first.fill("other")
    page.locator("#wb-data-save").click()
    expect(save_status).to_contain_text("no file is open: upload latin1.jsonl could not be opened")
    expect(save_status).to_contain_text(f"line 1: not UTF-8 text (bad byte at offset {offset}: 0xe9)")
