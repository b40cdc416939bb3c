"""The Train tab in a real headless Chromium against the real app (python webui.py) and real
training subprocesses on the tiny model: quick start to 100% with a loss curve, reload during a
run, queue + abort with a clean process table, a failing config's error, bad input, presets,
run comparison and deletion."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml
from playwright.sync_api import expect

from browser_helpers import choose
from helpers import write_tiny_preset

from workbench.jobs import store as jobs
from workbench.jobs import runs

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.expect_timeout(30_000)]

TRAIN_TIMEOUT = 300_000  # ms: start-up of a training process is ~25 s on a busy 2-core machine


@pytest.fixture(scope="module")
def tiny_preset(app_server, tiny_model_dir) -> str:
    return write_tiny_preset(app_server.home, tiny_model_dir, "tiny-quick")


def runs_root(app_server) -> Path:
    return app_server.home / "runs"


def open_train(page) -> None:
    page.get_by_role("tab", name="Train").click()
    page.locator("#wb-train-start").wait_for()


def pick(page, elem_id: str, option: str) -> None:
    choose(page, elem_id, option)


def load_preset(page, name: str) -> None:
    pick(page, "wb-train-preset", name)
    page.locator("#wb-train-preset-load").click()
    expect(page.locator("#wb-train-message")).to_contain_text(f"Loaded preset {name}")


def set_field(page, name: str, value) -> None:
    box = page.locator(f"#wb-train-form #opt-{name}").locator("input, textarea").first
    box.fill(str(value))
    box.press("Tab")


def set_run_name(page, name: str) -> None:
    box = page.locator("#wb-train-run-name textarea")
    box.fill(name)
    box.press("Tab")


def message(page):
    return page.locator("#wb-train-message")


def status(page):
    return page.locator("#wb-train-status")


def progress_text(page) -> str:
    return page.locator("#wb-train-progress").inner_text()


def job_status(app_server, name: str) -> dict:
    return json.loads((runs_root(app_server) / name / "status.json").read_text())


def wait_for_step(page, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = progress_text(page)
        if text.startswith("step "):
            return text
        time.sleep(0.5)
    raise AssertionError(f"no training step shown after {timeout}s: {progress_text(page)}\n{status(page).inner_text()}")


def assert_no_processes(st: dict) -> None:
    pids = [p for p in (st.get("pid"), st.get("supervisor_pid")) if p]
    deadline = time.time() + 15
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive and not jobs.group_alive(st.get("pgid")):
            return
        time.sleep(0.2)
    raise AssertionError(f"processes left behind: {alive}")


def test_quick_start_reaches_100_percent_with_a_loss_curve(page, app_server, tiny_preset, tiny_model_dir):
    open_train(page)
    load_preset(page, tiny_preset)
    expect(page.locator("#wb-model input")).to_have_value(str(tiny_model_dir))
    expect(page.locator("#wb-train-form #opt-max_steps input")).to_have_value("8")
    set_run_name(page, "quick")
    page.locator("#wb-train-preview").click()
    expect(message(page)).to_contain_text("This is what Start runs")
    command = page.locator("#wb-train-command textarea")
    expect(command).to_have_value(f"{sys.executable} -m workbench train {runs_root(app_server) / 'quick'}/config.yaml")
    expect(page.locator("#wb-train-yaml")).to_contain_text("max_steps: 8")
    assert not (runs_root(app_server) / "quick").exists()  # preview writes nothing

    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Started quick")
    expect(status(page)).to_contain_text("quick — finished", timeout=TRAIN_TIMEOUT)
    expect(page.locator("#wb-train-progress")).to_contain_text("step 8/8 · 100%")
    assert page.locator("#wb-train-progress .wb-progress").get_attribute("data-percent") == "100"
    curve = page.locator("#wb-train-plot .scatterlayer .trace path.js-line")
    expect(curve.first).to_be_attached()
    assert len(curve.first.get_attribute("d")) > 20  # a drawn line, not an empty trace
    assert "[train] step 8/8" in page.locator("#wb-train-log textarea").input_value()
    table = page.locator("#wb-train-runs")
    expect(table).to_contain_text("quick")
    expect(table).to_contain_text("finished")
    # The finished adapter is what the Chat / Evaluate pickers list.
    assert ("quick", str(runs_root(app_server) / "quick"), str(tiny_model_dir)) in runs.list_adapters(
        runs_root(app_server))
    st = job_status(app_server, "quick")
    assert st["state"] == "finished" and st["exit_code"] == 0


def test_reload_during_a_run_reattaches(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    set_field(page, "max_steps", 80)
    set_run_name(page, "reloaded")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Started reloaded")
    before = wait_for_step(page)
    step_before = int(before.split()[1].split("/")[0])

    page.reload()
    page.wait_for_selector("gradio-app", state="attached")
    open_train(page)
    # A fresh page finds the running job by itself and follows it to the end.
    expect(status(page)).to_contain_text("reloaded — running", timeout=30_000)
    after = wait_for_step(page)
    assert int(after.split()[1].split("/")[0]) >= step_before
    expect(status(page)).to_contain_text("reloaded — finished", timeout=TRAIN_TIMEOUT)
    expect(page.locator("#wb-train-progress")).to_contain_text("step 80/80 · 100%")
    assert job_status(app_server, "reloaded")["exit_code"] == 0
    assert [p.name for p in runs_root(app_server).iterdir() if p.name == "reloaded"] == ["reloaded"]


def test_second_run_is_queued_and_abort_leaves_no_process(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    set_field(page, "max_steps", 100000)
    set_run_name(page, "long-a")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Started long-a")
    expect(status(page)).to_contain_text("long-a — running")

    set_run_name(page, "long-b")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("long-b is queued (position 1)")
    expect(status(page)).to_contain_text("long-b — queued (position 1 in the queue; waiting for long-a)")
    expect(page.locator("#wb-train-runs")).to_contain_text("queued (#1)")
    assert job_status(app_server, "long-b")["state"] == "queued"

    # Abort the running one while it trains; the queued one then starts on its own.
    pick(page, "wb-train-run-pick", "long-a")
    expect(status(page)).to_contain_text("long-a — running")
    wait_for_step(page)
    page.locator("#wb-train-abort").click()
    expect(message(page)).to_contain_text("long-a: aborted", timeout=60_000)
    expect(status(page)).to_contain_text("long-a — aborted")
    a = job_status(app_server, "long-a")
    assert a["state"] == "aborted"
    assert_no_processes(a)

    pick(page, "wb-train-run-pick", "long-b")
    expect(status(page)).to_contain_text("long-b — running", timeout=60_000)
    page.locator("#wb-train-abort").click()
    expect(message(page)).to_contain_text("long-b: aborted", timeout=60_000)
    expect(status(page)).to_contain_text("long-b — aborted")
    assert_no_processes(job_status(app_server, "long-b"))
    assert jobs.active_job("train", runs_root(app_server)) is None


def test_a_failing_config_shows_its_error(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    page.locator("#wb-train-group-lora .label-wrap").click()
    set_field(page, "lora_target", "no_such_proj")
    set_run_name(page, "bad-target")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Started bad-target")
    expect(status(page)).to_contain_text("bad-target — failed", timeout=TRAIN_TIMEOUT)
    text = status(page).inner_text()
    assert "Error:" in text and "lora_target: no_such_proj match(es) no module of this model" in text
    assert "Last lines of log.txt" in text and "Traceback" not in text


def test_bad_input_is_refused_with_the_option_named(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    before = sorted(p.name for p in runs_root(app_server).iterdir()) if runs_root(app_server).exists() else []

    set_run_name(page, "../escape")
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("Cannot start: run name '../escape' is not allowed")

    set_run_name(page, "bad-input")
    set_field(page, "learning_rate", -1)
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("learning_rate: -1.0 is below the minimum 0.0")
    set_field(page, "learning_rate", "")
    page.locator("#wb-train-preview").click()
    expect(message(page)).to_contain_text("Cannot preview: learning_rate: a value is required")
    set_field(page, "learning_rate", 0.001)
    set_field(page, "max_steps", 2.5)
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("max_steps: invalid value 2.5 (expected a whole number")
    set_field(page, "max_steps", 8)

    page.locator("#opt-dataset [title='Clear']").click()
    page.locator("#wb-train-start").click()
    expect(message(page)).to_contain_text("dataset: name at least one dataset")

    page.locator("#wb-train-preset-name textarea").fill("../sneaky")
    page.locator("#wb-train-preset-save").click()
    expect(message(page)).to_contain_text("preset name '../sneaky' is not allowed")

    after = sorted(p.name for p in runs_root(app_server).iterdir()) if runs_root(app_server).exists() else []
    assert after == before  # nothing was started or created
    assert not (app_server.home / "escape").exists() and not (app_server.home / "sneaky.yaml").exists()


def test_save_and_load_a_preset(page, app_server, tiny_preset):
    open_train(page)
    load_preset(page, tiny_preset)
    set_field(page, "learning_rate", 0.0005)
    page.locator("#wb-train-preset-name textarea").fill("my-recipe")
    page.locator("#wb-train-preset-save").click()
    expect(message(page)).to_contain_text("Saved preset my-recipe")
    saved = yaml.safe_load((app_server.home / "presets" / "my-recipe.yaml").read_text())
    assert saved["learning_rate"] == 0.0005 and saved["dataset"] == "identity" and "output_dir" not in saved
    set_field(page, "learning_rate", 0.1)
    load_preset(page, "my-recipe")
    expect(page.locator("#wb-train-form #opt-learning_rate input")).to_have_value("0.0005")


def _stand_in_run(root: Path, name: str, lr: float, losses: list[float]) -> None:
    """A finished run made by a stand-in job (a python -c script writing progress.jsonl lines in the
    trainer's format): the comparison UI is under test here, not the trainer."""
    lines = [json.dumps({"kind": "train", "step": i + 1, "total_steps": len(losses), "loss": v})
             for i, v in enumerate(losses)]
    job = jobs.start_job("train", name, [sys.executable, "-c", textwrap.dedent(f"""
        open("progress.jsonl", "w").write({chr(10).join(lines)!r} + "\\n")
    """)], {"dataset": "identity", "learning_rate": lr}, cwd=root / name, root=root)
    assert job.wait(60)["state"] == "finished", job.tail_log()


def test_compare_runs_and_delete_with_confirmation(page, app_server):
    root = runs_root(app_server)
    _stand_in_run(root, "cmp-a", 1e-3, [2.0, 1.6, 1.3, 1.1])
    _stand_in_run(root, "cmp-b", 5e-4, [2.0, 1.8, 1.7, 1.6])
    page.reload()
    open_train(page)
    for name in ("cmp-a", "cmp-b"):
        pick(page, "wb-train-compare", name)
    page.keyboard.press("Escape")
    diff = page.locator("#wb-train-diff")
    expect(diff).to_contain_text("learning_rate")
    expect(diff).to_contain_text("0.0005")
    expect(page.locator("#wb-train-overlay .scatterlayer .trace")).to_have_count(4)  # raw + smoothed per run

    pick(page, "wb-train-run-pick", "cmp-a")
    expect(status(page)).to_contain_text("cmp-a — finished")
    page.locator("#wb-train-delete").click()
    question = page.locator("#wb-train-delete-question")
    expect(question).to_contain_text(f"Delete run cmp-a and every file in {root / 'cmp-a'}")
    page.locator("#wb-train-delete-cancel").click()
    expect(page.locator("#wb-train-delete-row")).to_be_hidden()
    assert (root / "cmp-a").is_dir()
    page.locator("#wb-train-delete").click()
    page.locator("#wb-train-delete-confirm").click()
    expect(message(page)).to_contain_text("Deleted cmp-a")
    assert not (root / "cmp-a").exists() and (root / "cmp-b").is_dir()
    expect(page.locator("#wb-train-runs")).not_to_contain_text("cmp-a")
