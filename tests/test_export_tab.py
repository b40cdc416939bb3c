"""Export tab in a real headless Chromium: bad requests are refused without starting a job, and the options
shown follow the method. (Merging the quick-start adapter from this tab, then loading and chatting with the merged
model, is part of the journey test: tests/test_journey.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import make_adapter

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def quickstart_adapter(app_server, bundled_model_dir) -> Path:
    """A LoRA adapter as a finished run in the app's runs directory."""
    out = app_server.home / "runs" / "identity"
    make_adapter(bundled_model_dir, out, seed=3, base_name="smollm2-135m-instruct")
    (out / "workbench_run.json").write_text(json.dumps({
        "stage": "sft", "finetuning_type": "lora", "base_model": "smollm2-135m-instruct", "dataset": "identity"}))
    return out


def pick(page, root, dropdown_id: str, option_text: str) -> None:
    choose(root, dropdown_id, option_text)


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


def test_gguf_format_shows_its_options_and_the_command(page, app_server, quickstart_adapter):
    page.get_by_role("tab", name="Export").click()
    tab = page.locator("#wb-export")
    tab.get_by_text("Merge adapter(s) into the model").click()
    expect(tab.locator("#opt-quant")).to_be_hidden()
    expect(tab.locator("#opt-shard_size")).to_be_visible()
    pick(page, tab, "opt-format", "gguf")
    expect(tab.locator("#opt-quant")).to_be_visible()
    expect(tab.locator("#opt-adapter_only")).to_be_visible()
    expect(tab.locator("#opt-shard_size")).to_be_hidden()
    pick(page, tab, "opt-quant", "q8_0")
    expect(tab.locator("#wb-export-command")).to_contain_text("--format gguf --quant q8_0")
    pick(page, tab, "opt-format", "safetensors")
    expect(tab.locator("#opt-quant")).to_be_hidden()
    expect(tab.locator("#wb-export-command")).not_to_contain_text("--quant")
