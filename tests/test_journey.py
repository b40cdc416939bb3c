"""A new user's whole journey in a real headless Chromium against the real app and the real bundled model,
on a fresh WORKBENCH_HOME and an empty dataset folder:

Data (upload an alpaca file with its own column names, check the detected mapping, preview, save) →
Train (the CPU quick-start preset on that dataset, followed to 100% with a loss curve) →
Chat (base and the new adapter side by side: different answers) →
Evaluate (base and adapter on the demo tasks: the matrix) →
Export (merge the adapter into a model, load it, chat with it).

Each step leaves a screenshot. ``make screenshots`` runs this test with WORKBENCH_SCREENSHOTS=docs/images, which
is how the README's tour images are made; otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import attach
from conftest import start_app, stop_app
from helpers import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.expect_timeout(60_000)]

LONG = 600_000  # ms: a step that trains, evaluates or merges on a shared 2-core machine
NAME, AUTHOR = "Nova", "the Workbench team"


@pytest.fixture(scope="module")
def journey(tmp_path_factory, bundled_model_dir, browser):
    home = tmp_path_factory.mktemp("journey-home")
    server = start_app(home, trains=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.wait_for_selector("gradio-app", state="attached")
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    yield {"server": server, "page": page, "home": home, "shots": shots, "work": tmp_path_factory.mktemp("journey")}
    context.close()
    stop_app(server)


def shoot(j, name: str) -> None:
    j["page"].wait_for_timeout(500)  # let plots finish their transition
    j["page"].screenshot(path=str(j["shots"] / f"{name}.png"), full_page=True)


def pick(page, root, elem_id: str, option: str) -> None:
    choose(root, elem_id, option)


def fill(root, elem_id: str, value) -> None:
    box = root.locator(f"#{elem_id}").locator("textarea, input").first
    box.fill(str(value))
    box.press("Tab")


def bubbles(page, elem_id: str) -> list[str]:
    return [b.inner_text() for b in page.locator(f"#{elem_id} .message-row").all()]


def test_new_user_journey(journey):
    j, page = journey, journey["page"]
    folder = j["work"] / "my-data"
    folder.mkdir()
    # The user's own file: the identity set with its own column names and a name filled in.
    rows = json.loads((REPO_ROOT / "data" / "identity.json").read_text())
    upload = j["work"] / "my_assistant.json"
    upload.write_text(json.dumps([
        {"question": r["instruction"], "answer": r["output"].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)}
        for r in rows], ensure_ascii=False, indent=1))

    # --- Data: upload, detected mapping, preview with trained tokens, save into dataset_info.json.
    page.get_by_role("tab", name="Data").click()
    fill(page, "wb-data-dir", folder)
    page.locator("#wb-data-dir textarea, #wb-data-dir input").first.press("Enter")
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(upload))
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("upload my_assistant.json")
    expect(page.locator("#wb-data-col-prompt input")).to_have_value("question")
    expect(page.locator("#wb-data-col-response input")).to_have_value("answer")
    page.locator("#wb-data-preview").click()
    expect(status).to_contain_text(f"{len(rows)} examples", timeout=LONG)
    expect(page.locator("#wb-data-rendered .token.highlighted")).to_have_count(1)
    page.locator("#wb-data-hist .js-plotly-plot").wait_for()
    fill(page, "wb-data-name", "my_assistant")
    page.locator("#wb-data-save").click()
    expect(page.locator("#wb-data-save-status")).to_contain_text("datasets are picked: my_assistant")
    assert json.loads((folder / "dataset_info.json").read_text())["my_assistant"]["columns"] == {
        "prompt": "question", "response": "answer"}
    shoot(j, "1-data")

    # --- Train: the CPU quick start, on the dataset just saved.
    page.get_by_role("tab", name="Train").click()
    # The form already points at the folder the dataset was saved into, and offers it.
    expect(page.locator("#wb-train-form #opt-dataset_dir textarea, #wb-train-form #opt-dataset_dir input").first
           ).to_have_value(str(folder))
    pick(page, page, "wb-train-preset", "cpu_quickstart")
    page.locator("#wb-train-preset-load").click()
    message = page.locator("#wb-train-message")
    expect(message).to_contain_text("Loaded preset cpu_quickstart")
    form = page.locator("#wb-train-form")
    fill(form, "opt-dataset_dir", folder)  # the preset's "identity" is not in this folder: it is dropped
    expect(form.locator("#opt-dataset [title='Clear']")).to_have_count(0)
    pick(page, form, "opt-dataset", "my_assistant")
    box = page.locator("#wb-train-run-name textarea")
    box.fill("my-assistant")
    box.press("Tab")
    page.locator("#wb-train-start").click()
    expect(message).to_contain_text("Started my-assistant")
    expect(page.locator("#wb-train-status")).to_contain_text("my-assistant — finished", timeout=LONG)
    expect(page.locator("#wb-train-progress")).to_contain_text("· 100%")
    curve = page.locator("#wb-train-plot .scatterlayer .trace path.js-line")
    expect(curve.first).to_be_attached()
    run_dir = j["home"] / "runs" / "my-assistant"
    config = json.loads((run_dir / "workbench_run.json").read_text())
    assert config["dataset"] in ("my_assistant", ["my_assistant"])
    losses = [json.loads(line)["loss"] for line in (run_dir / "progress.jsonl").read_text().splitlines()
              if '"loss"' in line and json.loads(line).get("loss") is not None]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    shoot(j, "2-train")

    # --- Chat: base and the new adapter answer the same prompt side by side, in one batch.
    page.locator("#wb-load").click()
    expect(page.locator("#wb-status")).to_contain_text("Loaded smollm2-135m-instruct", timeout=LONG)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-refresh").click()
    attach(page, "my-assistant")
    expect(page.locator("#chat-adapter-status")).to_contain_text("attached my-assistant")
    page.locator("#chat-mode").get_by_text("Compare").click()
    page.locator("#chat-input textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_contain_text("one batch —", timeout=LONG)
    base, tuned = bubbles(page, "chat-col-0"), bubbles(page, "chat-col-1")
    assert len(base) == 2 and len(tuned) == 2
    assert base[1].strip() != tuned[1].strip()
    assert NAME in tuned[1] and NAME not in base[1]
    shoot(j, "3-chat")

    # --- Evaluate: base and the adapter on the three demo tasks.
    page.get_by_role("tab", name="Evaluate").click()
    tab = page.locator("#wb-eval")
    tab.locator("#wb-eval-refresh").click()
    pick(page, tab, "wb-eval-adapters", "my-assistant (smollm2-135m-instruct)")
    fill(tab, "opt-max_samples", 2)
    fill(tab, "opt-max_new_tokens", 24)
    tab.locator("#wb-eval-start").click()
    expect(tab.locator("#wb-eval-status")).to_contain_text("Finished", timeout=LONG)
    matrix = tab.locator("#wb-eval-matrix")
    for text in ("base", "my-assistant", "BLEU", "ROUGE-1", "EM", "mean"):
        expect(matrix).to_contain_text(text)
    expect(tab.locator("#wb-eval-chart .js-plotly-plot")).to_be_visible()
    shoot(j, "4-evaluate")

    # --- Export: merge the adapter into a standalone model, load it from the top bar, chat with it.
    page.get_by_role("tab", name="Export").click()
    tab = page.locator("#wb-export")
    tab.locator("#wb-export-refresh").click()
    pick(page, tab, "wb-export-adapters", "my-assistant (smollm2-135m-instruct)")
    tab.locator("#wb-export-start").click()
    expect(tab.locator("#wb-export-status")).to_contain_text("Merged model saved to", timeout=LONG)
    merged = j["home"] / "exports" / "smollm2-135m-instruct-my-assistant"
    assert (merged / "config.json").is_file()
    shoot(j, "5-export")
    pick(page, page, "wb-model", str(merged))
    page.locator("#wb-load").click()
    expect(page.locator("#wb-status")).to_contain_text(f"Loaded {merged}", timeout=LONG)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-mode").get_by_text("Chat", exact=True).click()
    page.locator("#chat-input textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).not_to_contain_text("one batch")  # the compare's status is replaced
    expect(page.locator("#chat-status")).to_contain_text("tokens", timeout=LONG)
    expect(page.locator("#chat-bot .message-row")).to_have_count(2)
    answer = bubbles(page, "chat-bot")[-1]
    assert NAME in answer, answer  # the merged model learned what the adapter learned
    shoot(j, "6-chat-merged")


def test_the_ui_speaks_chinese(browser, journey):
    """Gradio picks the language from the browser's locale (or the footer's Settings); every label is T(en, zh)."""
    context = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(journey["server"].url)
    page.wait_for_selector("gradio-app", state="attached")
    for title in ("数据", "训练", "对话", "评测", "导出"):
        expect(page.get_by_role("tab", name=title)).to_be_visible()
    expect(page.locator("#wb-load")).to_have_text(re.compile("加载模型"))
    page.get_by_role("tab", name="训练").click()
    expect(page.locator("#wb-train-start")).to_have_text(re.compile("开始"))
    page.screenshot(path=str(journey["shots"] / "7-chinese.png"))
    context.close()
