"""Converters for the seed tasks on the real public files, plus the HF column shapes, and the demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO_ROOT
from workbench.config.base import WorkbenchError
from workbench.config.data import DataArgs
from workbench.data.converters import ConvertOptions, convert
from workbench.data.loader import load_records


@pytest.fixture()
def eval_dir(shared_data) -> Path:
    return shared_data / "eval"


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_wmt19_aligned_files_exact_prompt(eval_dir, tmp_path):
    out = tmp_path / "t.json"
    report = convert(ConvertOptions(task="wmt19", source=eval_dir / "wmt19_newstest2019.zh",
                                    target=eval_dir / "wmt19_newstest2019.en", output=out))
    zh = (eval_dir / "wmt19_newstest2019.zh").read_text().splitlines()
    en = (eval_dir / "wmt19_newstest2019.en").read_text().splitlines()
    rows = read(out)
    assert report.read == 2000 and len(rows) == 2000
    assert rows[0] == {"instruction": "请把下面的句子翻译为英文：\n" + zh[0], "input": "", "output": en[0],
                       "id": "wmt19_newstest2019:1"}
    # en→zh is the mirror.
    convert(ConvertOptions(task="wmt19", source=eval_dir / "wmt19_newstest2019.en", target=eval_dir /
                           "wmt19_newstest2019.zh", output=tmp_path / "r.json", direction="en-zh", max_samples=3))
    assert all(r["instruction"].startswith("请把下面的句子翻译为中文：\n") for r in read(tmp_path / "r.json"))


def test_wmt19_hf_translation_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"translation": {"zh": f"句子{i}", "en": f"sentence {i}"}} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    convert(ConvertOptions(task="wmt19", input=tmp_path / "train.parquet", output=tmp_path / "o.jsonl"))
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert out[3] == {"instruction": "请把下面的句子翻译为英文：\n句子3", "input": "", "output": "sentence 3"}


def test_cnn_dailymail_exact_prompt(eval_dir, tmp_path):
    convert(ConvertOptions(task="cnn_dailymail", input=eval_dir / "cnn_dailymail_test100.jsonl",
                           output=tmp_path / "s.json"))
    first = json.loads((eval_dir / "cnn_dailymail_test100.jsonl").read_text().splitlines()[0])
    rows = read(tmp_path / "s.json")
    assert len(rows) == 100
    assert rows[0]["instruction"] == ("Please generate an concise summarization for the following article：\n:"
                                      + first["article"])
    assert rows[0]["output"] == first["highlights"] and rows[0]["id"] == first["id"]


def test_squad_official_json_drops_or_keeps_unanswerable(eval_dir, tmp_path):
    squad = json.loads((eval_dir / "squad_v2_dev_2articles.json").read_text())
    report = convert(ConvertOptions(task="squad_v2", input=eval_dir / "squad_v2_dev_2articles.json",
                                    output=tmp_path / "q.json"))
    rows = read(tmp_path / "q.json")
    assert (report.read, report.dropped["unanswerable"], len(rows)) == (706, 320, 386)
    article = squad["data"][0]
    para, qa = article["paragraphs"][0], article["paragraphs"][0]["qas"][0]
    assert rows[0] == {
        "instruction": "Please answer the question in the context above, you only need to output the text of the "
                       f"answer, no explanation：\ntitle:{article['title']}\ncontext:{para['context']}\n"
                       f"question:{qa['question']}",
        "input": "", "output": qa["answers"][0]["text"], "id": qa["id"],
        "answers": [a["text"] for a in qa["answers"]]}
    convert(ConvertOptions(task="squad_v2", input=eval_dir / "squad_v2_dev_2articles.json",
                           output=tmp_path / "all.json", keep_unanswerable=True, unanswerable_answer="无法回答"))
    kept = read(tmp_path / "all.json")
    assert len(kept) == 706 and sum(r["output"] == "无法回答" for r in kept) == 320


def test_squad_hf_columns(tmp_path):
    rows = [
        {"id": "a", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
         "answers": {"text": ["France", "in France"], "answer_start": [12, 9]}},
        {"id": "b", "title": "T", "context": "Paris is in France.", "question": "Where is Rome?",
         "answers": {"text": [], "answer_start": []}},
    ]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    report = convert(ConvertOptions(task="squad_v2", input=tmp_path / "v.jsonl", output=tmp_path / "o.json"))
    assert report.dropped["unanswerable"] == 1
    (row,) = read(tmp_path / "o.json")
    assert row["output"] == "France" and row["instruction"].endswith("question:Where is Paris?")


def test_filters_sampling_and_held_out_split(eval_dir, tmp_path):
    opts = dict(task="wmt19", source=eval_dir / "wmt19_newstest2019.zh", target=eval_dir / "wmt19_newstest2019.en")
    report = convert(ConvertOptions(**opts, output=tmp_path / "k.json", drop_keywords=["Trump", "CHINA"],
                                    max_input_chars=60, min_output_chars=10))
    assert report.keyword_drops["trump"] > 0 and report.keyword_drops["china"] > 0
    assert report.dropped["input longer than --max-input-chars"] > 0
    rows = read(tmp_path / "k.json")
    assert all("trump" not in (r["instruction"] + r["output"]).lower() for r in rows)
    assert len(rows) == report.kept_after_filters == report.read - sum(report.dropped.values()) - sum(
        report.keyword_drops.values())
    # Seeded uniform sample plus a disjoint held-out part.
    convert(ConvertOptions(**opts, output=tmp_path / "a.json", test_output=tmp_path / "a_test.json",
                           max_samples=30, test_size=10, seed=1))
    convert(ConvertOptions(**opts, output=tmp_path / "b.json", max_samples=30, seed=2))
    a, a_test, b = read(tmp_path / "a.json"), read(tmp_path / "a_test.json"), read(tmp_path / "b.json")
    assert (len(a), len(a_test), len(b)) == (30, 10, 30)
    assert not {r["id"] for r in a} & {r["id"] for r in a_test}
    assert [r["id"] for r in a] != [r["id"] for r in b]
    ids = [int(r["id"].split(":")[1]) for r in a]
    assert ids == sorted(ids)  # the sample keeps the file's order


def test_converter_bad_input(eval_dir, tmp_path):
    (tmp_path / "short.en").write_text("one\ntwo\n")
    with pytest.raises(WorkbenchError, match="not line-aligned: .*short.en ends at line 2"):
        convert(ConvertOptions(task="wmt19", source=eval_dir / "wmt19_newstest2019.zh", target=tmp_path / "short.en",
                               output=tmp_path / "o.json"))
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "no article here"}) + "\n")
    with pytest.raises(WorkbenchError, match="x.jsonl line 1: missing column\\(s\\) article, highlights; the row has: text"):
        convert(ConvertOptions(task="cnn_dailymail", input=tmp_path / "x.jsonl", output=tmp_path / "o.json"))
    (tmp_path / "exists.json").write_text("[]")
    with pytest.raises(WorkbenchError, match="already exists"):
        convert(ConvertOptions(task="cnn_dailymail", input=eval_dir / "cnn_dailymail_test100.jsonl",
                               output=tmp_path / "exists.json"))
    assert (tmp_path / "exists.json").read_text() == "[]"


# ---- the demo data in the project ----------------------------------------------------------------

DEMO = REPO_ROOT / "data"


def test_demo_registry_loads_and_sizes():
    info = json.loads((DEMO / "dataset_info.json").read_text())
    assert {"identity", "demo_translation_zh_en", "demo_summarization", "demo_qa"} <= set(info)
    for name in info:
        records = load_records(DataArgs(dataset=name, dataset_dir=str(DEMO)))
        assert 20 <= len(records) <= 100, name
    identity = load_records(DataArgs(dataset="identity"))  # the default folder (the home's) starts with the demos
    who = next(r for r in identity if r.messages[0]["content"] == "Who are you?")
    assert who.messages[1]["content"].startswith("I am {{name}}, an AI assistant developed by {{author}}.")
    assert all("{{name}}" in r.messages[1]["content"] or "{{author}}" in r.messages[1]["content"] for r in identity)


@pytest.mark.parametrize("name,command", [
    ("demo_translation_zh_en", ["--task", "wmt19", "--source", "{E}/wmt19_validation_newstest2018.zh", "--target",
                                "{E}/wmt19_validation_newstest2018.en", "--max-samples", "60", "--seed", "0",
                                "--max-input-chars", "120"]),
    ("demo_qa", ["--task", "squad_v2", "--input", "{E}/squad_v2_dev_2articles.json", "--test-output", "{T}/t.json",
                 "--max-samples", "60", "--test-size", "40", "--seed", "0", "--max-input-chars", "1000"]),
])
def test_demo_sets_are_reproducible_with_the_converter_cli(cli, eval_dir, tmp_path, name, command):
    args = [a.replace("{E}", str(eval_dir)).replace("{T}", str(tmp_path)) for a in command]
    result = cli("data", "convert", *args, "--output", str(tmp_path / "o.json"))
    assert result.returncode == 0, result.stderr
    assert "wrote 60 rows" in result.stdout
    assert read(tmp_path / "o.json") == read(DEMO / f"{name}.json")
    if name == "demo_qa":
        assert read(tmp_path / "t.json") == read(DEMO / "demo_qa_test.json")
