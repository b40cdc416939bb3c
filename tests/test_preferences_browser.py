"""From side-by-side answers to a DPO run, in a real headless Chromium against the real app and the real bundled
model: Compare base and an adapter, prefer one column on two turns (the second after a Regenerate: the answers on
screen are what is kept), edit an answer and keep it, see the dataset in the Data tab's preview, then train a short
``dpo`` run on it from the Train tab and see it finish.

With WORKBENCH_SCREENSHOTS=docs/images it writes the README's 7-compare-prefer.png and 8-dpo-from-preferences.png.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import attach, make_adapter
from workbench.data.preferences import read_rows

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.trains, pytest.mark.expect_timeout(60_000)]

ANSWER_TIMEOUT = 300_000  # ms: the machine's two cores are shared with other test runs
TRAIN_TIMEOUT = 600_000
EDITED = "Why did the scarecrow win an award? Because he was outstanding in his field."


@pytest.fixture(scope="module")
def identity_run(app_server, bundled_model_dir) -> str:
    """A LoRA adapter of the bundled model as a finished run in the app's runs directory."""
    target = app_server.home / "runs" / "identity-quickstart"
    if not target.exists():
        make_adapter(bundled_model_dir, target, seed=7, base_name="smollm2-135m-instruct")
        (target / "workbench_run.json").write_text(json.dumps({
            "stage": "sft", "finetuning_type": "lora", "base_model": "smollm2-135m-instruct", "dataset": "identity"}))
    return target.name


def words(text: str) -> list[str]:
    """The words of an answer, the same whether read from the file or from its rendered bubble (where Markdown
    drops list numbers, bullets and emphasis marks)."""
    return [w for w in re.findall(r"[A-Za-z0-9]+", text) if not w.isdigit()]


def bubbles(page, elem_id: str) -> list[str]:
    return [b.inner_text() for b in page.locator(f"#{elem_id} .message-row").all()]


def fill(root, elem_id: str, value) -> None:
    box = root.locator(f"#{elem_id}").locator("textarea, input").first
    box.fill(str(value))
    box.press("Tab")


def pick(page, root, elem_id: str, option: str) -> None:
    choose(root, elem_id, option)


def ask(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()
    answered(page)


def answered(page) -> None:
    status = page.locator("#chat-status")
    expect(status).to_contain_text("answering", timeout=ANSWER_TIMEOUT)
    expect(status).to_contain_text("one batch —", timeout=ANSWER_TIMEOUT)


def shows(page, elem_id: str, text: str) -> None:
    """The column's last answer on screen is ``text`` (its words). Waited for: the status line comes in the same
    update as the answers, but a loaded machine has drawn it before a Chatbot drew that update's last word."""
    drawn = ""
    for _ in range(120):
        drawn = bubbles(page, elem_id)[-1]
        if words(drawn) == words(text):
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"{elem_id} shows {drawn!r} 30 s after the answer finished, not what was kept: {text!r}")


def shoot(page, shots: Path, name: str) -> None:
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_prefer_edit_and_train_dpo_on_the_judgements(page, app_server, identity_run, tmp_path):
    folder = tmp_path / "my-data"
    folder.mkdir()
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    data_file = folder / "preferences.jsonl"

    # The Data tab's folder is where judgements go (an empty one here, not the project's data/).
    page.get_by_role("tab", name="Data").click()
    fill(page, "wb-data-dir", folder)
    page.locator("#wb-data-dir textarea, #wb-data-dir input").first.press("Enter")

    # --- Chat: base and the adapter side by side.
    status = page.locator("#wb-status")
    page.locator("#wb-load").click()
    expect(status).to_contain_text("Loaded smollm2-135m-instruct", timeout=ANSWER_TIMEOUT)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-refresh").click()
    attach(page, identity_run)
    expect(page.locator("#chat-adapter-status")).to_contain_text(f"attached {identity_run}")
    page.locator("#chat-gen").get_by_text("Generation").first.click()
    fill(page.locator("#chat-gen"), "opt-max_new_tokens", 32)
    expect(page.locator("#chat-judge")).to_be_hidden()
    page.locator("#chat-mode").get_by_text("Compare").click()
    expect(page.locator("#chat-judge")).to_be_visible()
    expect(page.locator("#chat-prefer-0")).to_have_text("👍 base")
    expect(page.locator("#chat-prefer-1")).to_have_text(f"👍 {identity_run}")
    assert not page.locator("#chat-prefer-2").is_visible()
    judge = page.locator("#chat-judge-status")

    # Turn 1: the adapter's answer is better.
    ask(page, "Who are you?")
    page.locator("#chat-prefer-1").click()
    expect(judge).to_contain_text(f"{identity_run} over base")
    expect(judge).to_contain_text("Registered preferences")
    (row,) = read_rows(data_file)
    assert (row["chosen_model"], row["rejected_model"]) == (identity_run, "base")
    assert row["conversations"] == [{"from": "human", "value": "Who are you?"}]
    shows(page, "chat-col-1", row["chosen"]["value"])  # what is kept is what the page shows
    shows(page, "chat-col-0", row["rejected"]["value"])
    assert row["sampling"]["max_new_tokens"] == 32 and row["base_model"] == "smollm2-135m-instruct"
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["preferences"]["ranking"] is True and info["preferences"]["file_name"] == "preferences.jsonl"
    page.locator("#chat-prefer-0").click()  # the same turn again: refused, nothing appended
    expect(judge).to_contain_text("judged already")
    assert len(read_rows(data_file)) == 1

    # Turn 2, sampled, then regenerated: the answers on screen after Regenerate are the ones kept.
    page.locator("#chat-gen #opt-do_sample input").check()
    ask(page, "What can you do?")
    page.locator("#chat-regenerate").click()
    answered(page)
    page.locator("#chat-prefer-1").click()
    expect(judge).to_contain_text("now 2 pairs")
    row = read_rows(data_file)[1]
    shows(page, "chat-col-1", row["chosen"]["value"])  # the regenerated answers, not the first ones
    shows(page, "chat-col-0", row["rejected"]["value"])
    assert row["sampling"]["do_sample"] is True and row["chosen_model"] == identity_run
    assert row["conversations"][-1] == {"from": "human", "value": "What can you do?"}
    assert len(row["conversations"]) == 3  # the adapter's own history: question, its answer, question

    # Turn 3: edit base's answer, then keep it as the better one.
    page.locator("#chat-gen #opt-do_sample input").uncheck()
    ask(page, "Tell me a joke.")
    page.locator("#chat-edit-0").click()
    box = page.locator("#chat-edit-text textarea")
    expect(box).to_be_visible()
    base3 = box.input_value()  # the editor opens on base's answer, the one on screen
    shows(page, "chat-col-0", base3)
    box.fill(EDITED)
    page.locator("#chat-edit-keep").click()
    expect(judge).to_contain_text("base (edited) over")
    expect(judge).to_contain_text("now 3 pairs")
    expect(box).to_be_hidden()
    row = read_rows(data_file)[2]
    assert row["chosen"] == {"from": "gpt", "value": EDITED} and row["edited"] is True
    assert row["chosen_model"] == "base" and words(row["original_chosen"]["value"]) == words(base3)
    shoot(page, shots, "7-compare-prefer")

    # --- Data: previewed like any ranking dataset.
    page.get_by_role("tab", name="Data").click()
    page.locator("#wb-data-refresh").click()
    pick(page, page, "wb-data-dataset", "preferences")
    data_status = page.locator("#wb-data-status")
    expect(data_status).to_contain_text("sharegpt · ranking")
    page.locator("#wb-data-preview").click()
    expect(data_status).to_contain_text("3 examples read as sharegpt/ranking", timeout=ANSWER_TIMEOUT)

    # --- Train: the dataset is offered at once; a short dpo run on it finishes.
    page.get_by_role("tab", name="Train").click()
    form = page.locator("#wb-train-form")
    expect(form.locator("#opt-dataset_dir textarea, #opt-dataset_dir input").first).to_have_value(str(folder))
    pick(page, form, "opt-stage", "dpo")
    pick(page, form, "opt-dataset", "preferences")
    fill(form, "opt-max_steps", 2)
    fill(form, "opt-per_device_train_batch_size", 1)
    fill(form, "opt-cutoff_len", 128)
    page.locator("#wb-train-group-output").get_by_text("Checkpoints, resume and logging").click()
    fill(form, "opt-logging_steps", 1)  # a progress line (and a loss point) per step
    fill(page, "wb-train-run-name", "dpo-from-preferences")
    page.locator("#wb-train-start").click()
    expect(page.locator("#wb-train-message")).to_contain_text("Started dpo-from-preferences")
    expect(page.locator("#wb-train-status")).to_contain_text("dpo-from-preferences — finished", timeout=TRAIN_TIMEOUT)
    expect(page.locator("#wb-train-progress")).to_contain_text("· 100%")
    run_dir = app_server.home / "runs" / "dpo-from-preferences"
    config = json.loads((run_dir / "workbench_run.json").read_text())
    assert config["stage"] == "dpo" and config["dataset"] in ("preferences", ["preferences"])
    assert "Data: 3 training rows" in (run_dir / "log.txt").read_text()
    shoot(page, shots, "8-dpo-from-preferences")
