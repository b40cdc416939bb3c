"""Registry, formats and the loader against real data: LLaMA-Factory's registry and demo files, Qwen's
example, and small files written here in every supported file type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.config.base import WorkbenchError
from workbench.config.data import DataArgs
from workbench.data import records as R
from workbench.data.loader import build_dataset, load_records, load_spec
from workbench.data.registry import file_sha1, get_spec, load_registry, spec_from_entry
from workbench.data.templates import IGNORE_INDEX

# What LLaMA-Factory's demo files hold (rows, kind) — counted from the files themselves.
EXPECTED_LOCAL = {
    "identity": (91, "sft"),
    "alpaca_en_demo": (999, "sft"),
    "alpaca_zh_demo": (1000, "sft"),
    "glaive_toolcall_en_demo": (300, "tools"),
    "glaive_toolcall_zh_demo": (300, "tools"),
    "dpo_en_demo": (300, "ranking"),
    "dpo_zh_demo": (300, "ranking"),
    "kto_en_demo": (300, "kto"),
    "wiki_demo": (30, "text"),
    "c4_demo": (300, "text"),
}


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


@pytest.fixture()
def lf_dir(shared_data) -> Path:
    return shared_data / "llamafactory"


def write_registry(directory: Path, info: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dataset_info.json").write_text(json.dumps(info))
    return directory


def test_llamafactory_registry_parses_and_local_files_load(lf_dir):
    raw = json.loads((lf_dir / "dataset_info.json").read_text())
    registry = load_registry(lf_dir)
    assert len(registry) == len(raw) == 104
    local = {n: s for n, s in registry.items() if s.load_from == "file"}
    present = {n: s for n, s in local.items() if s.path.exists()}
    assert set(present) == set(EXPECTED_LOCAL)
    for name, spec in present.items():
        loaded = load_spec(spec)
        rows, kind = EXPECTED_LOCAL[name]
        assert (len(loaded.records), loaded.kind, loaded.rows_read) == (rows, kind, rows), name
        assert not loaded.skipped, name
    # Each format became the right record shape.
    tool = load_spec(registry["glaive_toolcall_en_demo"]).records[0]
    assert isinstance(tool, R.Conversation) and tool.tools[0]["function"]["name"] == "search_recipes"
    call = next(m for m in tool.messages if m.get("tool_calls"))
    assert call["tool_calls"] == [{"name": "search_recipes",
                                   "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}]
    assert any(m["role"] == "tool" for m in tool.messages)
    pair = load_spec(registry["dpo_en_demo"]).records[1]
    assert isinstance(pair, R.Preference) and pair.system.startswith("You are a teacher")
    assert pair.prompt[-1]["role"] == "user" and pair.chosen["role"] == "assistant"
    kto = load_spec(registry["kto_en_demo"]).records
    assert {r.kto_tag for r in kto} == {True, False}
    assert isinstance(load_spec(registry["wiki_demo"]).records[0], R.Text)


def test_entries_without_local_files_are_reported_not_crashed_on(lf_dir):
    registry = load_registry(lf_dir)
    with pytest.raises(WorkbenchError, match=r"dataset 'mllm_demo': file .*mllm_demo.json not found"):
        load_spec(registry["mllm_demo"])
    with pytest.raises(WorkbenchError, match=r"Hugging Face hub \(llamafactory/alpaca_en\) and needs download"):
        load_spec(registry["alpaca_en"])
    with pytest.raises(WorkbenchError, match=r"only on ModelScope \(deepctrl/deepctrl-sft-data\)"):
        load_spec(registry["deepctrl"])


def test_qwen_messages_file(shared_data, tmp_path):
    # Registered files stay inside the dataset folder; a link the user puts there may point elsewhere.
    (tmp_path / "qwen.jsonl").symlink_to(shared_data / "qwen" / "example_data.jsonl")
    write_registry(tmp_path, {"qwen": {"file_name": "qwen.jsonl", "formatting": "openai"}})
    records = load_records(DataArgs(dataset="qwen", dataset_dir=str(tmp_path)))
    assert len(records) == 2
    assert records[1].system == "You are a helpful assistant."
    assert [m["role"] for m in records[1].messages] == ["user", "assistant", "user", "assistant"]
    # An unregistered file given by path: the format is detected (openai messages).
    spec = get_spec(str(shared_data / "qwen" / "example_data.jsonl"), tmp_path)
    assert spec.formatting == "openai" and len(load_spec(spec).records) == 2


def test_partial_column_map_keeps_defaults_and_history_system(tmp_path):
    rows = [{"instruction": "Add", "input": "2 and 3", "answer": "5", "system": "Be terse.",
             "history": [["hi", "hello"]]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    write_registry(tmp_path, {"d": {"file_name": "d.json", "columns": {"response": "answer"}}})
    (record,) = load_records(DataArgs(dataset="d", dataset_dir=str(tmp_path)))
    assert record.system == "Be terse."
    assert record.messages == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Add\n2 and 3"}, {"role": "assistant", "content": "5"},
    ]


def test_ranking_in_both_shapes(tmp_path):
    (tmp_path / "rw.json").write_text(json.dumps([{"instruction": "Q?", "input": "", "output": ["good", "bad"]}]))
    (tmp_path / "cr.jsonl").write_text(json.dumps({"question": "Q?", "chosen": "good", "rejected": "bad"}) + "\n")
    write_registry(tmp_path, {
        "rw": {"file_name": "rw.json", "ranking": True},
        "cr": {"file_name": "cr.jsonl", "ranking": True,
               "columns": {"prompt": "question", "chosen": "chosen", "rejected": "rejected"}},
    })
    for name in ("rw", "cr"):
        (pair,) = load_records(DataArgs(dataset=name, dataset_dir=str(tmp_path)))
        assert isinstance(pair, R.Preference)
        assert (pair.prompt, pair.chosen["content"], pair.rejected["content"]) == (
            [{"role": "user", "content": "Q?"}], "good", "bad")


def test_file_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text("instruction,output\n" + "\n".join(f'q{i},"a{i}"' for i in range(5)) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink:
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n")
    info = {f"d_{ext}": {"file_name": f"d.{ext}"} for ext in ("jsonl", "csv", "parquet", "arrow")}
    info["d_txt"] = {"file_name": "d.txt", "columns": {"prompt": "text"}}
    write_registry(tmp_path, info)
    for ext in ("jsonl", "csv", "parquet", "arrow"):
        records = load_records(DataArgs(dataset=f"d_{ext}", dataset_dir=str(tmp_path)))
        assert [r.messages[1]["content"] for r in records] == [f"a{i}" for i in range(5)], ext
    assert [r.text for r in load_records(DataArgs(dataset="d_txt", dataset_dir=str(tmp_path)))] == [
        "first line", "second line"]


def test_combining_datasets_with_max_samples_each(lf_dir):
    args = DataArgs(dataset="identity, alpaca_zh_demo,c4_demo", dataset_dir=str(lf_dir), max_samples=7)
    records = load_records(args)
    assert len(records) == 21
    assert [r.kind for r in records] == ["conversation"] * 14 + ["text"] * 7
    assert "{{name}}" in records[0].messages[1]["content"]


def test_max_samples_reads_lazily(tmp_path):
    """A big JSON-lines file is read only as far as needed: a broken line far below is never reached."""
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(1000)] + ["{broken"]
    (tmp_path / "big.jsonl").write_text("\n".join(lines))
    write_registry(tmp_path, {"big": {"file_name": "big.jsonl"}})
    assert len(load_records(DataArgs(dataset="big", dataset_dir=str(tmp_path), max_samples=10))) == 10
    with pytest.raises(WorkbenchError, match=r"big.jsonl line 1001 column 2: not valid JSON"):
        load_records(DataArgs(dataset="big", dataset_dir=str(tmp_path)))


def test_file_sha1_is_checked(tmp_path, monkeypatch):
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    good = file_sha1(tmp_path / "d.json")
    write_registry(tmp_path, {"ok": {"file_name": "d.json", "file_sha1": good},
                              "bad": {"file_name": "d.json", "file_sha1": "0" * 40}})
    assert len(load_records(DataArgs(dataset="ok", dataset_dir=str(tmp_path)))) == 1
    # A mismatch is a warning, as in LLaMA-Factory; WORKBENCH_STRICT_SHA1=1 makes it an error.
    loaded = load_spec(get_spec("bad", tmp_path))
    assert len(loaded.records) == 1
    (warning,) = [w for w in loaded.warnings() if "file_sha1" in w]
    assert "dataset 'bad'" in warning and "0" * 40 in warning and good in warning and "WORKBENCH_STRICT_SHA1" in warning
    monkeypatch.setenv("WORKBENCH_STRICT_SHA1", "1")
    with pytest.raises(WorkbenchError) as err:
        load_records(DataArgs(dataset="bad", dataset_dir=str(tmp_path)))
    assert "dataset 'bad'" in str(err.value) and "0" * 40 in str(err.value) and good in str(err.value)


def test_hub_source_comes_first_and_offline_falls_back_to_file_name(tmp_path, monkeypatch):
    """LLaMA-Factory (and seed 001) read hf_hub_url when an entry lists both; offline, the local copy is read."""
    (tmp_path / "local.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    write_registry(tmp_path, {"both": {"hf_hub_url": "someone/not-cached-here", "file_name": "local.json"},
                              "hub": {"hf_hub_url": "someone/not-cached-here"}})
    spec = get_spec("both", tmp_path)
    assert (spec.load_from, spec.source) == ("hf_hub", "someone/not-cached-here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_spec(spec)
    assert len(loaded.records) == 1
    assert any("read file_name local.json instead" in w for w in loaded.warnings())
    with pytest.raises(WorkbenchError, match="needs download"):
        load_spec(get_spec("hub", tmp_path))


def test_build_sft_with_split_and_cache(lf_dir, tokenizer, wb_home):
    args = DataArgs(dataset="identity,alpaca_en_demo", dataset_dir=str(lf_dir), max_samples=40, val_size=0.25,
                    cutoff_len=256)
    logs: list[str] = []
    out = build_dataset(args, tokenizer, "sft", log=logs.append)
    assert out["stats"]["cached"] is False and out["stats"]["template"] == "smollm2"
    assert (len(out["train"]), len(out["eval"])) == (60, 20)
    assert set(out["train"].column_names) == {"input_ids", "attention_mask", "labels"}
    row = out["train"][0]
    assert len(row["input_ids"]) == len(row["labels"]) <= 256
    assert row["labels"][0] == IGNORE_INDEX and any(x != IGNORE_INDEX for x in row["labels"])
    # A second run loads the cache; the content is the same.
    again = build_dataset(args, tokenizer, "sft", log=logs.append)
    assert again["stats"]["cached"] is True and again["train"]["input_ids"] == out["train"]["input_ids"]
    assert any("cached" in line for line in logs)
    # overwrite_cache rebuilds; a different cutoff is a different cache entry.
    args.overwrite_cache = True
    assert build_dataset(args, tokenizer, "sft", log=logs.append)["stats"]["cached"] is False
    other = DataArgs(dataset="identity,alpaca_en_demo", dataset_dir=str(lf_dir), max_samples=40, val_size=0.25,
                     cutoff_len=128)
    assert build_dataset(other, tokenizer, "sft", log=logs.append)["stats"]["cached"] is False


def test_cache_follows_file_content(tmp_path, tokenizer, wb_home):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    write_registry(tmp_path, {"d": {"file_name": "d.json"}})
    args = DataArgs(dataset="d", dataset_dir=str(tmp_path))
    first = build_dataset(args, tokenizer, "sft", log=lambda m: None)
    path.write_text(json.dumps([{"instruction": "q", "output": "a different answer"}]))
    second = build_dataset(args, tokenizer, "sft", log=lambda m: None)
    assert second["stats"]["cached"] is False
    assert second["train"][0]["input_ids"] != first["train"][0]["input_ids"]


def test_build_dpo_and_pt(lf_dir, tokenizer, wb_home):
    out = build_dataset(DataArgs(dataset="dpo_en_demo", dataset_dir=str(lf_dir), max_samples=5), tokenizer, "dpo",
                        log=lambda m: None)
    row = out["train"][0]
    assert set(out["train"].column_names) == {"prompt", "chosen", "rejected"}
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["chosen"].endswith("<|im_end|>") and row["rejected"].endswith("<|im_end|>")
    pt = build_dataset(DataArgs(dataset="wiki_demo", dataset_dir=str(lf_dir), cutoff_len=128), tokenizer, "pt",
                       log=lambda m: None)
    lengths = [len(x) for x in pt["train"]["input_ids"]]
    assert max(lengths) == 128 and pt["train"][0]["labels"] == pt["train"][0]["input_ids"]
    with pytest.raises(WorkbenchError, match="preference pairs .* train with stage rm or dpo"):
        build_dataset(DataArgs(dataset="dpo_en_demo", dataset_dir=str(lf_dir)), tokenizer, "sft", log=lambda m: None)
    with pytest.raises(WorkbenchError, match="plain text trains with stage pt"):
        build_dataset(DataArgs(dataset="wiki_demo", dataset_dir=str(lf_dir)), tokenizer, "sft", log=lambda m: None)


def test_streaming(lf_dir, tokenizer, wb_home):
    args = DataArgs(dataset="alpaca_en_demo", dataset_dir=str(lf_dir), streaming=True, max_samples=30, val_size=5,
                    cutoff_len=128)
    out = build_dataset(args, tokenizer, "sft", log=lambda m: None)
    rows = list(out["train"])
    assert len(rows) == 25 and len(out["eval"]) == 5
    assert all(len(r["input_ids"]) <= 128 for r in rows)


def test_spec_entry_validation(tmp_path):
    with pytest.raises(WorkbenchError, match="unknown formatting 'sharegtp'"):
        spec_from_entry("x", {"file_name": "a.json", "formatting": "sharegtp"}, tmp_path)
    with pytest.raises(WorkbenchError, match="unknown column key\\(s\\) 'promt'"):
        spec_from_entry("x", {"file_name": "a.json", "columns": {"promt": "q"}}, tmp_path)
    with pytest.raises(WorkbenchError, match="no source"):
        spec_from_entry("x", {"formatting": "alpaca"}, tmp_path)


def test_num_samples_folder_and_eval_dataset(tmp_path, tokenizer, wb_home):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "parts").mkdir()
    for k in range(3):
        (tmp_path / "parts" / f"p{k}.jsonl").write_text(json.dumps(rows[k]) + "\n")
    write_registry(tmp_path, {
        "few": {"file_name": "d.json", "num_samples": 4},
        "many": {"file_name": "d.json", "num_samples": 25},
        "folder": {"file_name": "parts"},
    })
    few = load_records(DataArgs(dataset="few", dataset_dir=str(tmp_path)))
    assert len(few) == 4 and len({r.messages[0]["content"] for r in few}) == 4
    assert len(load_records(DataArgs(dataset="many", dataset_dir=str(tmp_path)))) == 25
    assert [r.messages[0]["content"] for r in load_records(DataArgs(dataset="folder", dataset_dir=str(tmp_path)))] \
        == ["q0", "q1", "q2"]
    out = build_dataset(DataArgs(dataset="few", eval_dataset="folder", dataset_dir=str(tmp_path)), tokenizer, "sft",
                        log=lambda m: None)
    assert (len(out["train"]), len(out["eval"])) == (4, 3)


def test_auto_template_for_a_model_outside_the_registry_uses_its_jinja(tiny_model_dir, lf_dir, wb_home):
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = build_dataset(DataArgs(dataset="identity", dataset_dir=str(lf_dir), max_samples=5), tiny, "sft",
                        log=lambda m: None)
    assert out["stats"]["template"] == "jinja"
    row = out["train"][0]
    assert row["input_ids"] == list(tiny.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content":
         "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"}],
        tokenize=True)["input_ids"])


@pytest.mark.parametrize("file_name,kind,rows", [
    ("alpaca_en_demo.json", "sft", 999),
    ("glaive_toolcall_en_demo.json", "tools", 300),
    ("dpo_en_demo.json", "ranking", 300),
    ("kto_en_demo.json", "kto", 300),
    ("c4_demo.jsonl", "text", 300),
    ("wiki_demo.txt", "text", 30),
])
def test_detected_format_of_unregistered_files_loads_like_the_registry(lf_dir, file_name, kind, rows):
    from workbench.data.formats import detect_spec

    spec = detect_spec(lf_dir / file_name)
    loaded = load_spec(spec)
    assert (loaded.kind, len(loaded.records), dict(loaded.skipped)) == (kind, rows, {})
