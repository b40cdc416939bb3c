"""What the Evaluate tab calls: the job's command (it parses back to the same options), reading finished
evaluations, and the tab's form helpers. No model is loaded here."""

from __future__ import annotations

import json

import pytest

from test_infer_batch import make_random_lora
from workbench.config.base import WorkbenchError
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs


def test_plan_argv_parses_back_to_the_same_options(tmp_path, tiny_model_dir):
    from workbench.cli import build_parser
    from workbench.evaluate.cli import _eval_options
    from workbench.evaluate.launch import plan_eval

    adapter = make_random_lora(tiny_model_dir, tmp_path / "a1", 1)
    model = ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", quantization_bit=4)
    eval_args = EvalArgs(task="qa,mine=demo_qa_test", metric="mine=f1", max_samples=5, batch_size=4,
                         include_base=False, rouge_cjk="jieba", merged=f"m={tiny_model_dir}")
    gen = GenerationArgs(repetition_penalty=1.1)
    plan = plan_eval(model, {"a1": str(adapter)}, eval_args, gen, name="eval-test", root=tmp_path / "runs")
    assert plan.output_dir == (tmp_path / "runs" / "eval-test").resolve()
    assert plan.command().startswith(f"python -m workbench eval --model {tiny_model_dir} --adapter a1={adapter} "
                                     "--task qa --task mine=demo_qa_test --metric mine=f1 --merged m=")
    args = build_parser("eval").parse_args(plan.argv[3:])
    model2, gen2, eval2, adapters2 = _eval_options(args)
    assert adapters2 == {"a1": str(adapter)}
    assert model2 == model and gen2 == gen
    assert eval2 == EvalArgs(**{**eval_args.to_dict(), "output_dir": str(plan.output_dir)})


def test_plan_refuses_bad_requests_before_any_job(tmp_path, tiny_model_dir):
    from workbench.evaluate.launch import plan_eval

    model = ModelArgs(model_name_or_path=str(tiny_model_dir))
    with pytest.raises(WorkbenchError, match="unknown metric 'x' for task 'qa'"):
        plan_eval(model, {}, EvalArgs(task="qa", metric="qa=x"), GenerationArgs(), root=tmp_path)
    with pytest.raises(WorkbenchError, match="adapter directory .*nope does not exist"):
        plan_eval(model, {"a": str(tmp_path / "nope")}, EvalArgs(task="qa"), GenerationArgs(), root=tmp_path)
    with pytest.raises(WorkbenchError, match="nothing to evaluate"):
        plan_eval(model, {}, EvalArgs(task="qa", include_base=False), GenerationArgs(), root=tmp_path)
    assert not any(tmp_path.iterdir())


def _fake_run(root, name, models=("base", "a")):
    """A results directory as the runner writes it (written here so that no model has to run)."""
    from workbench.evaluate.runner import _write_results, Variant
    from workbench.evaluate.tasks import Example, Task

    out = root / name
    out.mkdir(parents=True)
    task = Task("qa", "em", "demo", 8, [Example("q1", [{"role": "user", "content": "Where?"}], ["Paris"]),
                                         Example("q2", [{"role": "user", "content": "When?"}], [])])
    preds = {("qa", "base"): ["Paris", "1990"], ("qa", "a"): ["paris.", ""]}
    _write_results(out, [task], [Variant(m, "base" if m == "base" else "adapter", "x") for m in models], preds,
                   EvalArgs(task="qa"), GenerationArgs(), ModelArgs(), {"rows": 4})
    return out


def test_list_evaluations_and_example_rows(tmp_path):
    from workbench.evaluate.launch import example_rows, list_evaluations

    root = tmp_path / "runs"
    out = _fake_run(root, "eval-1")
    (root / "train-run").mkdir()
    assert list_evaluations(root) == [("eval-1", str(out))]
    example, rows = example_rows(out, "qa", 1)
    assert example == {"id": "q2", "prompt": "When?", "references": []}
    assert rows == [{"model": "base", "prediction": "1990", "em": 0.0, "f1": 0.0},
                    {"model": "a", "prediction": "", "em": 100.0, "f1": 100.0}]
    results = json.loads((out / "results.json").read_text())
    assert results["matrix"]["rows"] == [["qa", "EM", 50.0, 100.0], ["mean", "", 50.0, 100.0]]
    assert (out / "matrix.md").read_text().splitlines()[2] == "| qa | EM | 50.00 | **100.00** |"
    with pytest.raises(WorkbenchError, match="there is no example 3"):
        example_rows(out, "qa", 2)
    with pytest.raises(WorkbenchError, match="no task 'mt'"):
        example_rows(out, "mt", 0)


def test_tab_helpers(tmp_path):
    from workbench.ui.eval_tab import bar_figure, definitions_text, matrix_styler, task_list

    own = [{"task": "qa", "data": "../x.json", "metric": "f1", "shown": "x.json"},
           {"task": "mine", "data": "y.json", "metric": "rougeL", "shown": "y.json"}]
    assert task_list(["translation", "qa"], own) == ("translation,qa=../x.json,mine=y.json", "qa=f1,mine=rougeL")
    assert task_list(["qa"], []) == ("qa", None)
    with pytest.raises(WorkbenchError, match="choose at least one task"):
        task_list([], [])
    results = json.loads((_fake_run(tmp_path, "e") / "results.json").read_text())
    html = matrix_styler(results).to_html()
    style = html[html.index("<style"):html.index("</style>")]
    assert "background-color: #bbf7d0" in style
    # The best of each row (column 3: model "a"), and nothing else.
    assert "_row0_col3" in style and "_row1_col3" in style and "_col2" not in style
    fig = bar_figure(results)
    assert [t.name for t in fig.data] == ["base", "a"] and list(fig.data[1].y) == [100.0]
    results["timing"] = {"rows": 4, "generate_seconds": 2.0, "rows_per_second": 2.0}
    assert "4 rows (examples × models) in 2.0s, 2.00 rows/s" in definitions_text(results)
    results["timing"] = {"rows": 4, "generate_seconds": 2.0, "examples_per_second": 2.0}  # older results
    assert "2.00 rows/s" in definitions_text(results)


def test_plan_refuses_an_adapter_of_another_base(tmp_path, tiny_model_dir):
    from chat_helpers import make_adapter
    from workbench.evaluate.launch import plan_eval

    other = make_adapter(tiny_model_dir, tmp_path / "other", seed=1, base_name="qwen2.5-0.5b-instruct")
    model = ModelArgs(model_name_or_path=str(tiny_model_dir))
    root = tmp_path / "runs"
    with pytest.raises(WorkbenchError, match=f"adapter other \\({other}\\) was trained on qwen2.5-0.5b-instruct, "
                                             f"but the model to evaluate is {tiny_model_dir}"):
        plan_eval(model, {"other": str(other)}, EvalArgs(task="qa"), GenerationArgs(), root=root)
    assert not root.exists()
    # Its own base is accepted.
    plan = plan_eval(ModelArgs(model_name_or_path="qwen2.5-0.5b-instruct"), {"other": str(other)},
                     EvalArgs(task="qa"), GenerationArgs(), name="ok", root=root)
    assert plan.name == "ok"


def test_progress_is_counted_in_rows():
    """A row is one example answered by one model: the rate is rows/s, in the log line and in the tab."""
    from workbench.evaluate.launch import progress_summary
    from workbench.evaluate.runner import Progress

    lines = []
    progress = Progress(12, None, lines.append)
    progress.update(6, 30, 2.0, "qa", "base")
    assert "6/12 rows (50%)" in lines[0] and "3.00 rows/s" in lines[0] and "examples/s" not in lines[0]
    entry = {"step": 6, "total_steps": 12, "task": "qa", "rows_per_second": 3.0, "elapsed": 2.0, "eta": 2.0}
    assert "3.00 rows/s" in progress_summary(entry) and "examples/s" not in progress_summary(entry)
    old = {"step": 6, "total_steps": 12, "task": "qa", "examples_per_second": 1.5, "elapsed": 2.0, "eta": 4.0}
    assert "1.50 rows/s" in progress_summary(old)  # a progress file written before the rename
