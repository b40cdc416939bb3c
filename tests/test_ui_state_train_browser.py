"""Issue 18 on the Train tab, in a real headless Chromium against the real app (python webui.py): the form and
the dataset folder survive a reload (kept in this browser), the estimate shows before Start, a started run shows
what it is doing before its first progress line and is followed again after a reload, the live panel sits right
under Start, and a run's config loads back into the form. One app server for the module, one tiny training run."""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from helpers import write_tiny_preset

from workbench.jobs import store as jobs

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.expect_timeout(30_000)]

TRAIN_TIMEOUT = 300_000  # ms: start-up of a training process is ~25 s on a busy 2-core machine


@pytest.fixture(scope="module")
def tiny_preset(app_server, tiny_model_dir) -> str:
    return write_tiny_preset(app_server.home, tiny_model_dir, "tiny-state", max_steps=24, logging_steps=24,
                             save_steps=100)


def open_train(page) -> None:
    page.get_by_role("tab", name="Train").click()
    page.locator("#wb-train-start").wait_for()
    # The page's load events have put the stored form back: what is typed from now on is kept.
    page.wait_for_function("window.wbTrainRestored === true")


def reload(page) -> None:
    page.reload()
    page.wait_for_selector("gradio-app", state="attached")
    open_train(page)


def field(page, name: str):
    return page.locator(f"#wb-train-form #opt-{name}").locator("input, textarea").first


def set_field(page, name: str, value) -> None:
    box = field(page, name)
    box.fill(str(value))
    box.press("Tab")


def load_preset(page, name: str) -> None:
    choose(page, "wb-train-preset", name)
    page.locator("#wb-train-preset-load").click()
    expect(message(page)).to_contain_text(f"Loaded preset {name}")


def message(page):
    return page.locator("#wb-train-message")


def status(page):
    return page.locator("#wb-train-status")


def test_the_form_and_the_dataset_folder_survive_a_reload(page, app_server):
    # A dataset folder of the user's own, with the identity set registered in it.
    own = app_server.home / "my-data"
    shutil.copytree(app_server.home / "data", own)
    info = json.loads((own / "dataset_info.json").read_text())
    (own / "dataset_info.json").write_text(json.dumps({"my_identity": info["identity"]}))
    open_train(page)
    set_field(page, "learning_rate", 0.0007)
    set_field(page, "max_samples", 33)  # an optional number: blanked on load unless restored
    set_field(page, "dataset_dir", own)
    page.locator("#opt-dataset input").click()
    page.get_by_role("option", name="my_identity", exact=True).click()
    page.keyboard.press("Escape")
    expect(page.locator("#opt-dataset")).to_contain_text("my_identity")

    reload(page)
    expect(message(page)).to_contain_text("The form is as you left it in this browser")
    expect(field(page, "learning_rate")).to_have_value("0.0007")
    expect(field(page, "max_samples")).to_have_value("33")
    expect(field(page, "dataset_dir")).to_have_value(str(own))
    expect(page.locator("#opt-dataset")).to_contain_text("my_identity")
    # The Data tab shows the same folder, and lists its datasets.
    page.get_by_role("tab", name="Data").click()
    expect(page.locator("#wb-data-dir").locator("input, textarea").first).to_have_value(str(own))
    page.locator("#wb-data-dataset input").click()
    expect(page.get_by_role("option", name="my_identity", exact=True)).to_be_visible()
    page.keyboard.press("Escape")

    # Another browser has its own form; Reset form sets the defaults, and they are what a reload shows then.
    other = page.context.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(app_server.url)
    other.wait_for_selector("gradio-app", state="attached")
    open_train(other)
    expect(field(other, "learning_rate")).to_have_value("0.00005")
    other.context.close()
    open_train(page)
    page.locator("#wb-train-reset").click()
    expect(message(page)).to_contain_text("The form is back at its defaults")
    expect(field(page, "learning_rate")).to_have_value("0.00005")
    reload(page)
    expect(field(page, "learning_rate")).to_have_value("0.00005")
    expect(field(page, "max_samples")).to_have_value("")


def test_the_estimate_shows_before_start_with_slow_choices(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    estimate = page.locator("#wb-train-estimate")
    expect(estimate).to_contain_text("press Preview")
    page.locator("#wb-train-group-lora .label-wrap").click()
    page.locator("#opt-use_dora input").check()
    page.locator("#wb-train-preview").click()
    expect(estimate).to_contain_text("training examples")
    text = estimate.inner_text()
    assert "24 steps" in text and "tokens per step" in text and "time: about" in text
    assert "rough estimate" in text or "estimate from run" in text
    assert "Slow here: use_dora on a CPU" in text
    page.locator("#opt-use_dora input").uncheck()


def run_cell(page, name: str):
    """The runs table's cell with a run's name (the table also keeps a hidden copy of each cell's text)."""
    return page.locator("#wb-train-runs [data-testid^='cell-'] span").filter(has_text=re.compile(f"^{name}$"))


def _y(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


def test_a_run_shows_signs_of_life_and_is_followed_after_a_reload(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    box = page.locator("#wb-train-run-name textarea")
    box.fill("alive")
    box.press("Tab")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Started alive")
    # The live panel is right under the buttons: where one looks after pressing Start.
    start, panel = _y(page, "#wb-train-start"), _y(page, "#wb-train-status")
    assert 0 < panel["y"] - (start["y"] + start["height"]) < 250
    # Before its only progress line (logged at the last step) the run says what it does: the page shows it
    # ("Now: starting … / tokenising … / loading … / step 1 of 24 took …", read at each 2 s tick), and phase.json,
    # which it is read from, says step 1 and its time (read here more often than a tick: on an idle machine the
    # tiny model's 24 steps take about a second).
    phase_file = app_server.home / "runs" / "alive" / "phase.json"
    shown, written = set(), set()
    deadline = time.time() + 240
    while time.time() < deadline and not (shown and any(w.startswith("step 1 of 24 took") for w in written)):
        text = status(page).inner_text()
        if "Now:" in text:
            shown.add(text.split("Now:", 1)[1].strip().split("\n")[0])
        try:
            written.add(json.loads(phase_file.read_text())["text"])
        except (OSError, ValueError, KeyError):
            pass
        if "alive — finished" in text:
            break
    assert shown, "the page never said what the run was doing"
    assert any(w.startswith("step 1 of 24 took") for w in written), written

    reload(page)
    # A fresh page follows the run by itself, and "Show run" names it.
    expect(status(page)).to_contain_text("alive —", timeout=30_000)
    expect(page.locator("#wb-train-run-pick input")).to_have_value("alive")
    expect(status(page)).to_contain_text("alive — finished", timeout=TRAIN_TIMEOUT)
    expect(page.locator("#wb-train-progress")).to_contain_text("step 24/24 · 100%")
    phase = json.loads((app_server.home / "runs" / "alive" / "phase.json").read_text())
    assert phase["phase"] == "saving"


def _stand_in_run(root: Path, name: str, entries: list[dict]) -> None:
    """A finished run made by a stand-in job (a python -c script writing progress.jsonl lines in the trainer's
    format): the status panel is under test here, not the trainer."""
    lines = "\n".join(json.dumps(e) for e in entries)
    job = jobs.start_job("train", name, [sys.executable, "-c", textwrap.dedent(f"""
        open("progress.jsonl", "w").write({lines!r} + "\\n")
    """)], {"dataset": "identity", "learning_rate": 0.001}, cwd=root / name, root=root)
    assert job.wait(60)["state"] == "finished", job.tail_log()


def test_a_runs_config_loads_into_the_form_and_a_rising_eval_loss_is_pointed_out(page, app_server, tiny_preset):
    root = app_server.home / "runs"
    if not (root / "alive" / "config.yaml").is_file():
        pytest.skip("needs the run of test_a_run_shows_signs_of_life_and_is_followed_after_a_reload")
    _stand_in_run(root, "overfit", [
        {"kind": "train", "step": 10, "total_steps": 50, "loss": 1.0},
        *[{"kind": "eval", "step": 10 * i, "total_steps": 50, "eval_loss": v}
          for i, v in enumerate((0.9, 0.8, 0.85, 0.9, 0.95), 1)]])
    reload(page)
    run_cell(page, "overfit").click()
    expect(status(page)).to_contain_text("overfit — finished")
    expect(status(page)).to_contain_text("Overfitting? the eval loss rose 3 evaluations in a row")

    set_field(page, "learning_rate", 0.5)
    set_field(page, "max_steps", 3)
    run_cell(page, "alive").click()
    expect(page.locator("#wb-train-run-pick input")).to_have_value("alive")
    page.locator("#wb-train-clone").click()
    expect(message(page)).to_contain_text("Loaded the config of run alive")
    expect(field(page, "learning_rate")).to_have_value("0.001")
    expect(field(page, "max_steps")).to_have_value("24")
    expect(page.locator("#wb-train-run-name textarea")).not_to_have_value("alive")
    # The helper buttons are of normal height, not stretched to the boxes beside them.
    for elem in ("wb-train-preset-load", "wb-train-reset", "wb-train-preset-save", "wb-train-refresh",
                 "wb-train-clone", "wb-train-delete"):
        assert page.locator(f"#{elem}").bounding_box()["height"] < 50, elem
