"""Every gold answer and the original question id survive ``data convert --task squad_v2`` and evaluation,
so EM/F1 on a converted set equal the official SQuAD v2.0 script's on the same predictions.

The issue: the converter kept only ``answers[0]`` and evaluation numbered the rows 1..N, so 'Ethelred II'
scored 0 against 'King Ethelred II' although both are gold. The reference here is the official
``evaluate-v2.0.py`` written out below, run on the original JSON of the shared SQuAD v2 dev sample.
"""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path

import pytest

from workbench.config.data import DataArgs
from workbench.config.eval import EvalArgs
from workbench.data.converters import ConvertOptions, convert, convert_and_register, qa_prompt
from workbench.data.formats import detect_spec
from workbench.data.loader import load_records
from workbench.evaluate import metrics as M
from workbench.evaluate import tasks as T
from workbench.evaluate.runner import score_task

SQUAD = "squad_v2_dev_2articles.json"
ETHELRED = "56de15dbcffd8e1900b4b5c8"  # "Who did Emma Marry?": King Ethelred II / Ethelred II / King Ethelred II


# ---- the official SQuAD v2.0 evaluation (evaluate-v2.0.py, no-answer probabilities unused) ----------

def _official_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s)
    return " ".join(s.split())


def _official_tokens(s: str) -> list[str]:
    return _official_normalize(s).split() if s else []


def _official_f1(gold: str, pred: str) -> float:
    g, p = _official_tokens(gold), _official_tokens(pred)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if not g or not p:
        return int(g == p)
    if same == 0:
        return 0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def official_squad_v2(dataset: list[dict], preds: dict[str, str]) -> tuple[dict, dict, dict]:
    """(the script's output dict, exact per id, f1 per id) of ``preds`` on the articles ``dataset``."""
    exact, f1, has_ans = {}, {}, {}
    for article in dataset:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                qid = qa["id"]
                has_ans[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if _official_normalize(a["text"])] or [""]
                exact[qid] = max(int(_official_normalize(a) == _official_normalize(preds[qid])) for a in golds)
                f1[qid] = max(_official_f1(a, preds[qid]) for a in golds)

    def block(ids):
        return {"exact": 100.0 * sum(exact[k] for k in ids) / len(ids),
                "f1": 100.0 * sum(f1[k] for k in ids) / len(ids), "total": len(ids)}

    out = block(list(exact))
    for prefix, ids in (("HasAns", [k for k, v in has_ans.items() if v]),
                        ("NoAns", [k for k, v in has_ans.items() if not v])):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in block(ids).items()})
    return out, exact, f1


def only_questions(data: dict, ids: set[str]) -> list[dict]:
    """The articles of ``data`` with only the questions in ``ids`` (the official file, cut to a subset)."""
    out = []
    for article in data["data"]:
        paras = [{**p, "qas": [q for q in p["qas"] if q["id"] in ids]} for p in article["paragraphs"]]
        paras = [p for p in paras if p["qas"]]
        if paras:
            out.append({**article, "paragraphs": paras})
    return out


# ---- fixtures and fixed predictions -------------------------------------------------------------------

@pytest.fixture(scope="module")
def squad_path(shared_data) -> Path:
    return shared_data / "eval" / SQUAD


@pytest.fixture(scope="module")
def squad(squad_path) -> dict:
    return json.loads(squad_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def questions(squad) -> dict[str, dict]:
    return {q["id"]: {**q, "_title": a["title"], "_context": p["context"]}
            for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]}


def fixed_predictions(questions: dict[str, dict]) -> dict[str, str]:
    """A deterministic mix: non-first gold answers (the case of the issue), gold answers dressed up with
    articles and punctuation, partly right and wrong answers; empty or wrong answers to unanswerable ones."""
    preds = {}
    for k, (qid, qa) in enumerate(questions.items()):
        texts = [a["text"] for a in qa["answers"]]
        if not texts:
            preds[qid] = "" if k % 2 else qa.get("plausible_answers", [{"text": "Paris"}])[0]["text"]
            continue
        others = [t for t in texts if _official_normalize(t) != _official_normalize(texts[0])]
        other = others[0] if others else texts[-1]
        preds[qid] = [other, other, f"The {texts[-1]}.", f"{other} and more words", texts[-1].split()[-1],
                      "Paris"][k % 6]
    preds[ETHELRED] = "Ethelred II"
    return preds


# ---- conversion keeps ids and every gold answer; evaluation scores against them all ---------------------

@pytest.mark.parametrize("keep_unanswerable", [False, True])
def test_converted_set_scores_equal_the_official_script(squad_path, squad, questions, tmp_path, keep_unanswerable):
    out = tmp_path / "squad.json"
    convert(ConvertOptions(task="squad_v2", input=squad_path, output=out, keep_unanswerable=keep_unanswerable))
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == (706 if keep_unanswerable else 386)
    for row in rows:
        golds = [a["text"] for a in questions[row["id"]]["answers"]]
        assert row["answers"] == golds
        assert row["output"] == (golds[0] if golds else "unanswerable")
    multi = [r for r in rows if len({M.normalize_answer(a) for a in r["answers"]}) > 1]
    assert len(multi) == 143  # questions whose gold answers differ, all 143 with an answer

    (task,) = T.build_tasks([f"qa={out}"])
    ids = [r["id"] for r in rows]
    assert [e.id for e in task.examples] == ids  # the SQuAD ids, not 1..N
    assert [e.references for e in task.examples] == [r["answers"] for r in rows]

    preds = fixed_predictions(questions)
    scores, per, _ = score_task(task, [preds[i] for i in ids], EvalArgs())
    official, exact, f1 = official_squad_v2(only_questions(squad, set(ids)), {i: preds[i] for i in ids})
    assert set(official) <= set(scores)
    for key, value in official.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key
    assert scores["em"] == scores["exact"] and scores["f1"] == pytest.approx(official["f1"])
    assert [p["em"] for p in per] == [100.0 * exact[i] for i in ids]
    assert [p["f1"] for p in per] == pytest.approx([100.0 * f1[i] for i in ids])
    assert per[ids.index(ETHELRED)] == {"em": 100.0, "f1": 100.0}

    # The project's own official-format scorer (``score squad_v2``) on the original JSON agrees too.
    golds = {i: g for i, g in M.load_squad_golds(squad_path).items() if i in set(ids)}
    assert M.squad_v2(golds, preds).scores == pytest.approx(official)
    # And the first gold alone (the old conversion) scores lower: the test tells the two apart.
    first_only = M.squad_v2({r["id"]: [r["output"]] for r in rows}, preds).scores
    assert first_only["exact"] < official["exact"] - 5 and first_only["f1"] < official["f1"]


def test_held_out_split_sampled_and_registered_keeps_ids_and_golds(squad_path, questions, tmp_path):
    """The usual route: a seeded held-out split registered by name, evaluated with --max-samples, and a
    dataset_info ``num_samples`` choice of rows: every example keeps its own id and gold answers."""
    data_dir = tmp_path / "data"
    convert_and_register(ConvertOptions(task="squad_v2", input=squad_path, output=Path("unused.json"),
                                        test_output=Path("unused_test.json"), max_samples=60, test_size=30, seed=0),
                         data_dir, "squad_conv")
    test_rows = json.loads((data_dir / "squad_conv_test.json").read_text(encoding="utf-8"))
    assert len(test_rows) == 30
    assert sum(len(set(r["answers"])) > 1 for r in test_rows) > 5

    (task,) = T.build_tasks(["qa=squad_conv_test"], dataset_dir=str(data_dir), max_samples=7)
    assert [e.id for e in task.examples] == [r["id"] for r in test_rows[:7]]
    assert [e.references for e in task.examples] == [r["answers"] for r in test_rows[:7]]

    info_file = data_dir / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8"))
    info["squad_conv_test"]["num_samples"] = 45  # all 30 rows, 15 of them twice
    info_file.write_text(json.dumps(info), encoding="utf-8")
    (task,) = T.build_tasks(["qa=squad_conv_test"], dataset_dir=str(data_dir))
    assert len(task.examples) == 45
    for e in task.examples:
        qa = questions[e.id]
        assert e.prompt_text == qa_prompt(qa["_title"], qa["_context"], qa["question"])
        assert e.references == [a["text"] for a in qa["answers"]]


def test_training_ignores_the_extra_columns(squad_path, tmp_path):
    """formats.py reads the converted rows as plain alpaca rows: id and answers map to nothing, and the
    training records equal those of the same rows without the two columns."""
    out = tmp_path / "squad.json"
    convert(ConvertOptions(task="squad_v2", input=squad_path, output=out, keep_unanswerable=True, max_samples=50))
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert {"id", "answers"} <= set(rows[0])
    spec = detect_spec(out)
    assert spec.formatting == "alpaca" and not spec.ranking
    assert set(spec.columns.values()) & {"id", "answers"} == set()
    assert {spec.columns[k] for k in ("prompt", "query", "response")} == {"instruction", "input", "output"}

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("id", "answers")} for r in rows]),
                    encoding="utf-8")
    records = load_records(DataArgs(dataset=str(out)))
    assert len(records) == 50 and records == load_records(DataArgs(dataset=str(bare)))
    assert all(r.kind == "conversation" and [m["role"] for m in r.messages] == ["user", "assistant"]
               for r in records)
    assert [r.messages[1]["content"] for r in records] == [r["output"] for r in rows]


def test_answers_column_forms_and_duplicate_ids(tmp_path):
    """Rows of one's own: answers as {"text": [...]} or a string, numeric ids; repeated ids are scored by
    position (the per-example ids still shown as given)."""
    rows = [
        {"instruction": "q1", "output": "Paris", "id": 7, "answers": {"text": ["Paris", "the city of Paris"]}},
        {"instruction": "q2", "output": "Rome", "id": 7, "answers": "Rome"},
        {"instruction": "q3", "output": "Oslo"},
    ]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (task,) = T.build_tasks([f"mine={path}"], "mine=em")
    assert [(e.id, e.references) for e in task.examples] == [
        ("7", ["Paris", "the city of Paris"]), ("7", ["Rome"]), ("3", ["Oslo"])]
    scores, per, _ = score_task(task, ["city of Paris", "Milan", "Oslo"], EvalArgs())
    assert [p["em"] for p in per] == [100.0, 0.0, 100.0] and scores["total"] == 3


# ---- the command line: data convert, then eval with the tiny model ------------------------------------

def test_cli_convert_then_eval_reports_squad_ids_and_official_scores(cli, tiny_model_dir, squad_path, squad,
                                                                     tmp_path):
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    res = cli("data", "convert", "--task", "squad_v2", "--input", str(squad_path), "--output", str(train),
              "--test-output", str(test), "--max-samples", "20", "--test-size", "10", "--seed", "0",
              "--max-input-chars", "700")
    assert res.returncode == 0, res.stderr
    test_rows = json.loads(test.read_text(encoding="utf-8"))
    out = tmp_path / "eval"
    res = cli("eval", "--model", str(tiny_model_dir), "--task", f"qa={test}", "--max-samples", "4",
              "--batch-size", "4", "--max-new-tokens", "4", "--infer_dtype", "float32", "--output", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    preds = [json.loads(line) for line in (out / "base" / "qa" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in test_rows[:4]]
    assert [p["references"] for p in preds] == [r["answers"] for r in test_rows[:4]]
    by_id = {p["id"]: p["prediction"] for p in preds}
    official, exact, f1 = official_squad_v2(only_questions(squad, set(by_id)), by_id)
    scores = json.loads((out / "results.json").read_text())["scores"]["qa"]["base"]
    for key, value in official.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key
    assert [p["score"]["em"] for p in preds] == [100.0 * exact[p["id"]] for p in preds]
