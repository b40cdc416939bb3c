"""Export tab in a real headless Chromium: merge the CPU quick-start adapter into the bundled model as a
job, then pick the merged model in the top bar, load it, and chat with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import run_cli
from helpers import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def quickstart_adapter(app_server) -> Path:
    """The CPU quick start trained for real into the app's runs directory, cut to 6 steps to keep the test
    short on a shared CPU (the full preset is 45 steps)."""
    out = app_server.home / "runs" / "identity"
    result = run_cli("train", str(REPO_ROOT / "presets" / "cpu_quickstart.yaml"), "--output_dir", str(out),
                     "--max_steps", "6", "--plot_loss", "false", env={"WORKBENCH_HOME": str(app_server.home)},
                     timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "workbench_run.json").is_file()
    return out


def pick(page, root, dropdown_id: str, option_text: str) -> None:
    root.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option_text, exact=True).first.click()


def test_merge_quickstart_adapter_then_load_and_chat_with_the_merged_model(page, app_server, quickstart_adapter):
    page.get_by_role("tab", name="Export").click()
    tab = page.locator("#wb-export")
    # The adapter was trained after the page was built: Refresh lists it, with its base model.
    tab.locator("#wb-export-refresh").click()
    pick(page, tab, "wb-export-adapters", "identity (smollm2-135m-instruct)")
    expect(tab.locator("#wb-export-model input")).to_have_value("smollm2-135m-instruct")
    expect(tab.locator("#wb-export-command")).to_contain_text("-m workbench export --model smollm2-135m-instruct")

    tab.locator("#wb-export-start").click()
    status = tab.locator("#wb-export-status")
    expect(status).to_contain_text("Merged model saved to", timeout=300_000)
    merged = app_server.home / "exports" / "smollm2-135m-instruct-identity"
    assert (merged / "config.json").is_file() and (merged / "workbench_export.json").is_file()
    record = json.loads((merged / "workbench_export.json").read_text())
    assert record["adapters"] == {"identity": str(quickstart_adapter)}
    # The job's progress went through every step; its log is shown.
    expect(tab.locator("#wb-export-log textarea")).to_have_value(re.compile(r"\[7/7\] moving the finished model"))

    # The merged model is now a choice of the top bar's model picker: load it.
    pick(page, page, "wb-model", str(merged))
    page.locator("#wb-load").click()
    expect(page.locator("#wb-status")).to_contain_text(f"Loaded {merged}", timeout=120_000)

    # Chat with it: the merged model answers exactly like the base model + the adapter, and unlike the base.
    env = {"WORKBENCH_HOME": str(app_server.home)}
    prompt = ["--prompt", "Who are you?", "--max_new_tokens", "40"]
    merged_answer = run_cli("chat", "--model", str(merged), *prompt, env=env)
    adapter_answer = run_cli("chat", "--adapter", f"identity={quickstart_adapter}", *prompt, env=env)
    base_answer = run_cli("chat", *prompt, env=env)
    for result in (merged_answer, adapter_answer, base_answer):
        assert result.returncode == 0, result.stderr[-2000:]
    assert merged_answer.stdout == adapter_answer.stdout
    assert merged_answer.stdout != base_answer.stdout


def test_bad_request_is_refused_in_the_tab_without_starting_a_job(page, app_server, quickstart_adapter):
    page.get_by_role("tab", name="Export").click()
    tab = page.locator("#wb-export")
    tab.locator("#wb-export-refresh").click()
    tab.get_by_text("Combine adapters into one adapter").click()
    pick(page, tab, "wb-export-adapters", "identity (smollm2-135m-instruct)")
    tab.locator("#wb-export-start").click()
    expect(tab.locator("#wb-export-status")).to_contain_text("at least two adapters")
    # Density is only offered for the methods that prune.
    expect(tab.locator("#opt-density")).to_be_hidden()
    pick(page, tab, "opt-method", "ties")
    expect(tab.locator("#opt-density")).to_be_visible()
    jobs_dirs = [p for p in (app_server.home / "runs").iterdir() if p.name.startswith("merge-adapters")]
    assert jobs_dirs == []
