"""Evaluate tab in a real headless Chromium: evaluate the tiny model and two adapters (finished runs in the
app's runs directory) on the QA demo set and on a task of our own, as a job; then read the matrix (best per
row highlighted), the chart, the example browser and the CSV."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from test_infer_batch import make_random_lora

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MAX_NEW_TOKENS = 12
PROMPTS = ["Tell me about the sea.", "Write a short poem about bread.", "What is a cat?", "Name three colours.",
           "Describe a city at night.", "How do bees live?"]


@pytest.fixture(scope="module")
def eval_setup(app_server, tiny_model_dir, tmp_path_factory):
    """Two adapters as finished training runs, and a task whose references are adapter alpha's own greedy
    answers: alpha must score 100 ROUGE-1 there and the others less, so the matrix has a clear best.
    (The random tiny base model itself answers with an end token at once: empty answers.)"""
    import torch

    from workbench.config.generation import GenerationArgs
    from workbench.config.model import ModelArgs
    from workbench.data.templates import resolve_template
    from workbench.infer.batch import generate_batch_output
    from workbench.models.loader import load_model

    runs = app_server.home / "runs"
    for name, seed in (("alpha-run", 1), ("beta-run", 2)):
        out = make_random_lora(tiny_model_dir, runs / name, seed)
        (out / "workbench_run.json").write_text(json.dumps({
            "stage": "sft", "finetuning_type": "lora", "base_model": str(tiny_model_dir), "template": "auto",
            "dataset": "demo"}))
    # Loaded for generation like the evaluation loads it, in float32 (the test picks it in the top bar): in bfloat16
    # the products' path (rows kernel, oneDNN, PyTorch's own; timed per process and row count) moves the last bit, and
    # a random model's greedy answer can follow it — a CI machine's job once scored alpha 88.5 against this process.
    loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), device="cpu", infer_dtype="float32"),
                        adapters={"alpha-run": str(runs / "alpha-run")}, generation=True)
    template = resolve_template("auto", str(tiny_model_dir))
    ids = [template.encode_prompt(loaded.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    with torch.inference_mode():
        answers = generate_batch_output(loaded, ids, ["alpha-run"] * len(ids), GenerationArgs(max_new_tokens=MAX_NEW_TOKENS),
                                        template.stop_token_ids(loaded.tokenizer)).texts
    rows = [{"instruction": p, "input": "", "output": a} for p, a in zip(PROMPTS, answers)
            if re.search(r"[A-Za-z0-9]", a)][:2]  # ROUGE needs a word to match
    assert len(rows) == 2, answers
    data = tmp_path_factory.mktemp("eval-data") / "own_answers.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return {"model": str(tiny_model_dir), "data": data}


def pick(page, root, dropdown_id: str, option_text: str) -> None:
    choose(root, dropdown_id, option_text)


def open_tab(page):
    page.get_by_role("tab", name="Evaluate").click()
    return page.locator("#wb-eval")


def add_own_task(page, tab, *, metric: str, name: str = "", files=(), registered: str | None = None) -> None:
    """Your own task, picked: a registered dataset or uploaded file(s), a metric from the list, a name."""
    own = tab.locator("#wb-eval-own")
    if not tab.locator("#wb-eval-own-add").is_visible():
        own.get_by_text("Your own tasks").first.click()
    if registered:
        pick(page, tab, "wb-eval-own-dataset", registered)
    if files:
        tab.locator("#wb-eval-own-file input[type=file]").set_input_files([str(f) for f in files])
        # Uploaded: the file's row in the list (its text splits name and extension, so the cell's name is matched;
        # while uploading, the component shows the name in a progress list instead).
        expect(tab.locator("#wb-eval-own-file").get_by_role("cell", name=Path(files[0]).name, exact=True)) \
            .to_be_visible(timeout=60_000)
    pick(page, tab, "wb-eval-own-metric", metric)
    tab.locator("#wb-eval-own-name textarea, #wb-eval-own-name input").first.fill(name)
    tab.locator("#wb-eval-own-add").click()


def test_evaluate_adapters_as_a_job_and_browse_the_results(page, app_server, eval_setup):
    tab = open_tab(page)
    model = eval_setup["model"]
    model_box = tab.locator("#wb-eval-model input")
    model_box.fill(model)
    model_box.press("Enter")
    tab.locator("#wb-eval-refresh").click()
    pick(page, tab, "wb-eval-adapters", f"alpha-run ({model})")
    pick(page, tab, "wb-eval-adapters", f"beta-run ({model})")
    tab.locator("#wb-eval-tasks").get_by_text("Translation zh→en (BLEU)").click()
    tab.locator("#wb-eval-tasks").get_by_text("Summarization (ROUGE-1)").click()
    tab.locator("#opt-max_samples input").fill("2")
    tab.locator("#opt-max_new_tokens input").fill(str(MAX_NEW_TOKENS))
    pick(page, page, "wb-dtype", "float32")  # as the references were made (see eval_setup)
    add_own_task(page, tab, files=[eval_setup["data"]], metric="ROUGE-1", name="own")
    expect(tab.locator("#wb-eval-own-table")).to_contain_text("own_answers.json (uploaded)")
    command = tab.locator("#wb-eval-command")
    expect(command).to_contain_text(f"-m workbench eval --model {model} --adapter alpha-run=")
    expect(command).to_contain_text("--infer_dtype float32")
    # The uploaded copy Gradio keeps (its own name last) is what the job reads.
    expect(command).to_contain_text(re.compile(r"--task qa --task own=/\S+/own_answers\.json --metric own=rouge1 "
                                               r"--max-samples 2"))

    tab.locator("#wb-eval-start").click()
    expect(tab.locator("#wb-eval-status")).to_contain_text("Finished", timeout=300_000)
    expect(tab.locator("#wb-eval-progress")).to_contain_text(re.compile(r"12/12 rows \(100%\) .* rows/s"))

    # The run directory of the job holds the evaluation's outputs.
    out = next(p for p in (app_server.home / "runs").iterdir() if (p / "results.json").is_file())
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert [m["name"] for m in results["models"]] == ["base", "alpha-run", "beta-run"]
    own = results["scores"]["own"]
    assert own["alpha-run"]["rouge1"] == pytest.approx(100.0)
    assert own["base"]["rouge1"] < 100.0 and own["beta-run"]["rouge1"] < 100.0

    # The matrix: one row per task plus the mean, the best of each row highlighted.
    matrix = tab.locator("#wb-eval-matrix")
    expect(tab.locator("#wb-eval-runs input")).to_have_value(out.name)
    for text in ("alpha-run", "beta-run", "ROUGE-1", "EM", "mean", "100.00"):
        expect(matrix).to_contain_text(text)
    best = matrix.locator('[role="gridcell"]', has_text=re.compile(r"^\s*100\.00\s*$")).first
    assert best.get_attribute("data-col") == "3"  # alpha-run's column
    row = best.get_attribute("data-row")
    highlighted = [matrix.locator(f'[role="gridcell"][data-row="{row}"][data-col="{c}"]').get_attribute("style")
                   for c in (2, 3, 4)]
    assert ["187, 247, 208" in s and "bold" in s for s in highlighted] == [False, True, False], highlighted
    expect(tab.locator("#wb-eval-chart .js-plotly-plot")).to_be_visible()
    expect(tab.locator("#wb-eval-definitions")).to_contain_text("rouge-score F-measure, mean over examples")

    # Example browser: the same prompt, each model's answer, the reference and the scores.
    expect(tab.locator("#wb-eval-example")).to_contain_text("Example 1")
    table = tab.locator("#wb-eval-example-table")
    for text in ("base", "alpha-run", "beta-run", "em", "f1"):
        expect(table).to_contain_text(text)
    tab.locator("#wb-eval-next").click()
    expect(tab.locator("#wb-eval-example")).to_contain_text("Example 2")
    pick(page, tab, "wb-eval-browse-task", "own")
    expect(tab.locator("#wb-eval-example")).to_contain_text(json.loads(eval_setup["data"].read_text())[0]["instruction"])
    expect(table).to_contain_text("rouge1")

    # The CSV download is the matrix file.
    expect(tab.locator("#wb-eval-csv a").first).to_have_attribute("href", re.compile(r"/matrix\.csv$"))
    with page.expect_download() as download:
        tab.locator("#wb-eval-csv a").first.click()
    rows = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    assert rows[0] == ["task", "metric", "base", "alpha-run", "beta-run"]
    assert rows[2][:2] == ["own", "ROUGE-1"] and rows[2][3] == "100.0"


def test_bad_requests_are_refused_in_the_tab(page, app_server, eval_setup, tmp_path):
    tab = open_tab(page)
    add_own_task(page, tab, metric="F1", name="mine")  # no data picked
    own_status = tab.locator("#wb-eval-own-status")
    expect(own_status).to_contain_text("pick a registered dataset or upload a data file for the task")
    # A file that is no data: named by its own name when added, not when a job fails.
    broken = tmp_path / "answers.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    add_own_task(page, tab, files=[broken], metric="F1", name="mine")
    expect(own_status).to_contain_text("answers.jsonl line 2")
    assert "/" not in own_status.inner_text().split("answers.jsonl")[0]  # no temporary folder before the name
    expect(tab.locator("#wb-eval-command")).not_to_contain_text("mine=")
    for label in ("Translation zh→en (BLEU)", "Summarization (ROUGE-1)", "Question answering (EM)"):
        tab.locator("#wb-eval-tasks").get_by_text(label).click()
    tab.locator("#wb-eval-start").click()
    expect(tab.locator("#wb-eval-status")).to_contain_text("choose at least one task")
    # Stale: once the form makes a command again, the ❌ of the Start before goes.
    tab.locator("#wb-eval-tasks").get_by_text("Question answering (EM)").click()
    expect(tab.locator("#wb-eval-status")).to_have_text("")
    before = {p.name for p in (app_server.home / "runs").iterdir()}
    assert not any(name.startswith("eval-") and not (app_server.home / "runs" / name / "results.json").exists()
                   for name in before)
