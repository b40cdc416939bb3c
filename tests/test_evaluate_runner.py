"""The models × tasks runner and the ``eval`` command: real generation with the tiny model and random
LoRA adapters on the demo sets, outputs checked against the scorers, and every bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from test_infer_batch import make_random_lora
from workbench.config.base import WorkbenchError
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.evaluate import metrics as M
from workbench.evaluate import tasks as T

EVAL = "eval"


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-adapters")
    return {"alpha": str(make_random_lora(tiny_model_dir, root / "alpha", 1)),
            "beta": str(make_random_lora(tiny_model_dir, root / "beta", 2))}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_eval_cli_writes_predictions_results_and_matrix(cli, tiny_model_dir, adapters, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--model", str(tiny_model_dir), "--adapter", f"alpha={adapters['alpha']}",
              "--adapter", f"beta={adapters['beta']}", "--task", "translation", "--task", "summarization",
              "--task", "qa", "--max-samples", "3", "--batch-size", "4", "--max-new-tokens", "4",
              "--infer_dtype", "float32", "--output", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "rows/s" in res.stdout and "examples/s" not in res.stdout and "ETA" in res.stdout
    results = json.loads((out / "results.json").read_text())
    models = ["base", "alpha", "beta"]
    assert [m["name"] for m in results["models"]] == models
    assert [t["name"] for t in results["tasks"]] == ["translation", "summarization", "qa"]
    assert "tok:13a" in results["tasks"][0]["definition"] and "SQuAD v2.0" in results["tasks"][2]["definition"]

    # Each model × task has its predictions, and the scores in results.json follow from them.
    for model in models:
        preds = _read_jsonl(out / model / "translation" / "predictions.jsonl")
        assert len(preds) == 3 and {"id", "prompt", "prediction", "reference", "score"} <= set(preds[0])
        assert preds[0]["prompt"].startswith("请把下面的句子翻译为英文：\n")
        import sacrebleu

        bleu = sacrebleu.corpus_bleu([p["prediction"] for p in preds], [[p["reference"] for p in preds]]).score
        assert results["scores"]["translation"][model]["bleu"] == pytest.approx(bleu)
        qa = _read_jsonl(out / model / "qa" / "predictions.jsonl")
        em = [100.0 * M.qa_scores(p["references"], p["prediction"])[0] for p in qa]
        assert [p["score"]["em"] for p in qa] == em
        assert results["scores"]["qa"][model]["em"] == pytest.approx(sum(em) / 3)
        summ = _read_jsonl(out / model / "summarization" / "predictions.jsonl")
        r1 = M.rouge([p["prediction"] for p in summ], [p["reference"] for p in summ]).scores["rouge1"]
        assert results["scores"]["summarization"][model]["rouge1"] == pytest.approx(r1)

    with open(out / "matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["task", "metric", *models]
    assert [r[:2] for r in rows[1:]] == [["translation", "BLEU"], ["summarization", "ROUGE-1"], ["qa", "EM"],
                                         ["mean", ""]]
    for col, model in enumerate(models, start=2):
        values = [results["scores"][t][model][m] for t, m in (("translation", "bleu"), ("summarization", "rouge1"),
                                                                ("qa", "em"))]
        assert float(rows[4][col]) == pytest.approx(round(sum(values) / 3, 2), abs=0.011)
    md = (out / "matrix.md").read_text()
    assert md.startswith("| task | metric | base | alpha | beta |")

    progress = _read_jsonl(out / "progress.jsonl")
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 27  # 3 tasks × 3 examples × 3 models
    assert all({"rows_per_second", "examples_per_second", "elapsed", "eta"} <= set(p) for p in progress)
    assert results["timing"]["rows"] == 27 and results["timing"]["new_tokens"] > 0
    assert results["timing"]["rows_per_second"] == results["timing"]["examples_per_second"] > 0  # old name kept

    # The same output directory is not overwritten.
    again = cli("eval", "--model", str(tiny_model_dir), "--task", "qa", "--max-samples", "1", "--output", str(out))
    assert again.returncode == 1 and "already holds evaluation results" in again.stderr


def test_mixed_batches_equal_separate_runs_and_merged_models(tiny_model_dir, adapters, tmp_path):
    """The base and two adapters in shared batches give the answers each gives evaluated alone; a merged
    (standalone) model runs in its own pass — here the base weights themselves, so it must equal the base."""
    from workbench.evaluate.runner import evaluate, load_predictions

    model = ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu")
    gen = GenerationArgs(max_new_tokens=6)
    together = evaluate(model, EvalArgs(task="qa,translation", max_samples=4, batch_size=6,
                                        merged=f"copy={tiny_model_dir}"), gen,
                        adapters=adapters, output_dir=tmp_path / "together", log=lambda m: None)
    assert [m["name"] for m in together["models"]] == ["base", "alpha", "beta", "copy"]
    alone = evaluate(model, EvalArgs(task="qa,translation", max_samples=4, batch_size=6, include_base=False), gen,
                     adapters={"beta": adapters["beta"]}, output_dir=tmp_path / "alone", log=lambda m: None)
    for task in ("qa", "translation"):
        mixed_beta = [p["prediction"] for p in load_predictions(tmp_path / "together", "beta", task)]
        alone_beta = [p["prediction"] for p in load_predictions(tmp_path / "alone", "beta", task)]
        assert mixed_beta == alone_beta
        base = [p["prediction"] for p in load_predictions(tmp_path / "together", "base", task)]
        copy = [p["prediction"] for p in load_predictions(tmp_path / "together", "copy", task)]
        assert copy == base
        alpha = [p["prediction"] for p in load_predictions(tmp_path / "together", "alpha", task)]
        assert alpha != base  # the adapters change the answers: the equalities above are not vacuous


def test_merged_model_is_prompted_with_its_training_template(tiny_model_dir, tmp_path):
    """The base keeps its own template; a merged model whose export record names llama2 is prompted in llama2."""
    import shutil

    from workbench.evaluate.runner import evaluate

    merged = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged)
    (merged / "workbench_export.json").write_text(json.dumps({"template": "llama2"}))
    said: list[str] = []
    evaluate(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu"),
             EvalArgs(task="qa", max_samples=1, merged=f"m={merged}"), GenerationArgs(max_new_tokens=2),
             output_dir=tmp_path / "out", log=said.append)
    loaded = [line for line in said if line.startswith("loaded ")]
    assert len(loaded) == 2, said
    assert loaded[0].endswith("templates base: jinja") and loaded[1].endswith("templates m: llama2"), loaded


def test_data_parallel_generation_gathers_in_order(cli, tiny_model_dir, adapters, tmp_path):
    """Two processes under accelerate launch (gloo on CPU) give the single-process predictions, in order."""
    common = ["eval", "--model", str(tiny_model_dir), "--adapter", f"alpha={adapters['alpha']}", "--task", "qa",
              "--max-samples", "3", "--batch-size", "2", "--max-new-tokens", "4", "--infer_dtype", "float32"]
    one = cli(*common, "--output", str(tmp_path / "one"))
    two = cli(*common, "--output", str(tmp_path / "two"), "--num-processes", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr + two.stdout
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in two.stdout
    assert json.loads((tmp_path / "two" / "results.json").read_text())["timing"]["processes"] == 2
    for model in ("base", "alpha"):
        a = _read_jsonl(tmp_path / "one" / model / "qa" / "predictions.jsonl")
        b = _read_jsonl(tmp_path / "two" / model / "qa" / "predictions.jsonl")
        assert [(p["id"], p["prediction"]) for p in a] == [(p["id"], p["prediction"]) for p in b]


# ---- tasks (no model) ----------------------------------------------------------------------------

def test_tasks_from_shared_public_files(shared_data):
    from workbench.data.converters import qa_prompt, summarization_prompt, translation_prompt

    e = shared_data / "eval"
    (qa,) = T.build_tasks([f"qa={e / 'squad_v2_dev_2articles.json'}"], max_samples=None)
    assert len(qa.examples) == 706 and qa.metric == "em"
    assert sum(1 for x in qa.examples if not x.references) == 320  # unanswerable kept, gold = no answer
    first = qa.examples[0]
    assert first.id == "56ddde6b9a695914005b9628" and first.references == ["France"] * 4
    assert first.prompt_text == qa_prompt("Normans", json.loads((e / "squad_v2_dev_2articles.json").read_text())
                                          ["data"][0]["paragraphs"][0]["context"], "In what country is Normandy located?")
    zh = (e / "wmt19_newstest2019.zh").read_text(encoding="utf-8").splitlines()
    en = (e / "wmt19_newstest2019.en").read_text(encoding="utf-8").splitlines()
    for spec in (f"translation={e / 'wmt19_newstest2019.zh'}",
                 f"translation={e / 'wmt19_newstest2019.zh'}+{e / 'wmt19_newstest2019.en'}"):
        (tr,) = T.build_tasks([spec], max_samples=5)
        assert [x.prompt_text for x in tr.examples] == [translation_prompt(s) for s in zh[:5]]
        assert [x.references for x in tr.examples] == [[s] for s in en[:5]]
    (summ,) = T.build_tasks([f"summarization={e / 'cnn_dailymail_test100.jsonl'}"], max_samples=2)
    row = json.loads((e / "cnn_dailymail_test100.jsonl").read_text().splitlines()[0])
    assert summ.examples[0].prompt_text == summarization_prompt(row["article"])
    assert summ.examples[0].references == [row["highlights"]] and summ.metric == "rouge1"
    # Demo sets by default, metric overrides, and tasks of one's own.
    tasks = T.build_tasks("translation,summarization,qa", "qa=f1", max_samples=2)
    assert [(t.name, t.metric, t.dataset) for t in tasks] == [
        ("translation", "bleu", "demo_translation_zh_en_test"), ("summarization", "rouge1", "demo_summarization_test"),
        ("qa", "f1", "demo_qa_test")]
    (mine,) = T.build_tasks(["mine=demo_summarization_test"], "mine=rougeL", max_samples=1)
    assert mine.metric == "rougeL" and mine.max_new_tokens == 128


def test_qa_scoring_uses_every_gold_and_the_no_answer_phrase():
    from workbench.evaluate.runner import score_task

    task = T.Task("qa", "em", "x", 8, [
        T.Example("1", [{"role": "user", "content": "q"}], ["France", "the French Republic"]),
        T.Example("2", [{"role": "user", "content": "q"}], []),
        T.Example("3", [{"role": "user", "content": "q"}], ["unanswerable"]),
    ])
    scores, per, definition = score_task(task, ["French Republic", "Unanswerable.", ""], EvalArgs())
    assert [p["em"] for p in per] == [100.0, 100.0, 100.0] and scores["em"] == 100.0
    assert scores["NoAns_total"] == 2 and "SQuAD v2.0" in definition
    scores, per, _ = score_task(task, ["Paris", "Paris", "Paris"], EvalArgs())
    assert scores["em"] == 0.0


def test_bad_inputs_name_what_is_wrong(tmp_path, tiny_model_dir):
    no_output = tmp_path / "no_refs.json"
    no_output.write_text(json.dumps([{"instruction": "Translate: 你好", "input": ""}]), encoding="utf-8")
    with pytest.raises(WorkbenchError, match=r"has no reference answers: no 'output' column \(columns: instruction, input\)"):
        T.build_tasks([f"translation={no_output}"])
    partly = tmp_path / "partly.json"
    partly.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b", "output": ""}]))
    (task,) = T.build_tasks([f"translation={partly}"])
    assert len(task.examples) == 1 and "skipped (not evaluated)" in task.warnings[0]
    squad_rows = tmp_path / "squad_rows.jsonl"
    squad_rows.write_text(json.dumps({"context": "c", "question": "q", "answers": None}) + "\n")
    with pytest.raises(WorkbenchError, match="without reference answers a QA row cannot be scored"):
        T.build_tasks([f"qa={squad_rows}"])
    with pytest.raises(WorkbenchError, match="unknown task 'poetry'"):
        T.parse_task_specs(["poetry"])
    with pytest.raises(WorkbenchError, match="unknown metric 'meteor' for task 'qa'"):
        T.parse_task_specs(["qa"], "qa=meteor")
    with pytest.raises(WorkbenchError, match="task 'mine' is not built in: give its data"):
        T.parse_task_specs(["mine"], "mine=bleu")
    with pytest.raises(WorkbenchError, match="--metric names task"):
        T.parse_task_specs(["qa"], "translation=bleu")
    with pytest.raises(WorkbenchError, match="given twice"):
        T.parse_task_specs(["qa", "qa=demo_qa"])
    with pytest.raises(WorkbenchError, match="not-there.json: file not found"):
        T.build_tasks(["qa=/no/such/dir/not-there.json"])
    with pytest.raises(WorkbenchError, match="dataset 'nosuchset' is not in"):
        T.build_tasks(["qa=nosuchset"])
    with pytest.raises(WorkbenchError, match="SRC\\+TGT names two line-aligned text files"):
        T.build_tasks([f"translation={partly}+/no/such.en"])


def test_eval_cli_bad_inputs(cli, tiny_model_dir, tmp_path):
    no_output = tmp_path / "no_refs.json"
    no_output.write_text(json.dumps([{"instruction": "Translate: 你好", "input": ""}]), encoding="utf-8")
    res = cli("eval", "--model", str(tiny_model_dir), "--task", f"translation={no_output}", "--output",
              str(tmp_path / "o1"))
    assert res.returncode == 1 and "has no reference answers" in res.stderr and "Traceback" not in res.stderr
    res = cli("eval", "--model", str(tiny_model_dir), "--task", "qa", "--metric", "qa=meteor")
    assert res.returncode == 1 and "error: unknown metric 'meteor' for task 'qa'" in res.stderr
    res = cli("eval", "--model", str(tiny_model_dir), "--task", "qa", "--batch-size", "0")
    assert res.returncode == 1 and "batch_size: 0 is below the minimum 1" in res.stderr
    res = cli("eval", "--model", str(tiny_model_dir), "--task", "qa", "--max-samples", "1",
              "--adapter", f"x={tmp_path / 'missing'}", "--output", str(tmp_path / "o2"))
    assert res.returncode == 1 and f"adapter directory {tmp_path / 'missing'} does not exist" in res.stderr


def _no_model_loading(*args, **kwargs):
    raise AssertionError("the model must not be loaded for a refused evaluation")


def test_refused_evaluation_leaves_no_run_directory(tiny_model_dir, wb_home, tmp_path, monkeypatch):
    """A bad metric or dataset fails before the output directory (or any model) exists."""
    import workbench.models.loader as loader
    from workbench.evaluate.runner import evaluate
    from workbench.paths import runs_dir

    monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    monkeypatch.setattr(loader, "load_model", _no_model_loading)
    model = ModelArgs(model_name_or_path=str(tiny_model_dir), device="cpu")
    with pytest.raises(WorkbenchError, match="unknown metric 'meteor' for task 'qa'"):
        evaluate(model, EvalArgs(task="qa", metric="qa=meteor"), GenerationArgs(), adapters={}, log=lambda m: None)
    with pytest.raises(WorkbenchError, match="not-there.json: file not found"):
        evaluate(model, EvalArgs(task="qa=/no/such/dir/not-there.json"), GenerationArgs(), adapters={},
                 log=lambda m: None)
    assert not runs_dir().exists() or not any(runs_dir().iterdir())
    with pytest.raises(WorkbenchError, match="unknown metric"):
        evaluate(model, EvalArgs(task="qa", metric="qa=meteor"), GenerationArgs(), adapters={},
                 output_dir=tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_adapter_of_another_base_is_refused_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    """As in chat and export: an adapter whose config or run record names another base model is refused."""
    import re

    import workbench.models.loader as loader
    from chat_helpers import make_adapter
    from workbench.evaluate.runner import evaluate

    monkeypatch.setattr(loader, "load_model", _no_model_loading)
    other = make_adapter(tiny_model_dir, tmp_path / "other", seed=1, base_name="qwen2.5-0.5b-instruct")
    recorded = make_adapter(tiny_model_dir, tmp_path / "recorded", seed=2, base_name="Qwen/Qwen2.5-0.5B-Instruct")
    (recorded / "workbench_run.json").write_text(json.dumps({"base_model": "qwen2.5-0.5b-instruct"}))
    model = ModelArgs(model_name_or_path=str(tiny_model_dir), device="cpu")
    for name, path in (("other", other), ("recorded", recorded)):
        out = tmp_path / f"out-{name}"
        with pytest.raises(WorkbenchError, match=rf"adapter {name} \({re.escape(str(path))}\) was trained on "
                                                 rf"(qwen2.5-0.5b-instruct|Qwen/Qwen2.5-0.5B-Instruct), but the model "
                                                 rf"to evaluate is {re.escape(str(tiny_model_dir))}"):
            evaluate(model, EvalArgs(task="qa", max_samples=1), GenerationArgs(), adapters={name: str(path)},
                     output_dir=out, log=lambda m: None)
        assert not out.exists()
