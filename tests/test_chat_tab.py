"""The Chat tab in a real headless Chromium against the real app (python webui.py) and the real bundled
model: streaming, regenerate, clear, stop; the identity quick-start adapter from the runs directory
compared with the base side by side (one batch, per-variant history); bad inputs as visible messages.

The adapter here is a random LoRA on the bundled model, saved as a finished run (training the real
quick-start adapter and comparing it in this tab is the journey test's job: tests/test_journey.py).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import attach, make_adapter, steady_bubbles

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.expect_timeout(60_000)]

ANSWER_TIMEOUT = 300_000  # ms: the machine's two cores are shared with other test runs


@pytest.fixture(scope="module")
def identity_run(app_server, bundled_model_dir) -> str:
    """A LoRA adapter of the bundled model as a finished run in the app's runs directory."""
    target = app_server.home / "runs" / "identity-quickstart"
    make_adapter(bundled_model_dir, target, seed=7, base_name="smollm2-135m-instruct")
    (target / "workbench_run.json").write_text(json.dumps({
        "stage": "sft", "finetuning_type": "lora", "base_model": "smollm2-135m-instruct", "dataset": "identity"}))
    return target.name


def load_bundled(page) -> None:
    status = page.locator("#wb-status")
    expect(status).to_contain_text(re.compile("Loaded|No model loaded"))  # the page load has read the server's state
    if "Loaded smollm2-135m-instruct" not in status.inner_text():
        page.locator("#wb-load").click()
        expect(status).to_contain_text("Loaded smollm2-135m-instruct", timeout=ANSWER_TIMEOUT)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-send").wait_for()


def set_max_new_tokens(page, n: int) -> None:
    page.locator("#chat-gen").get_by_text("Generation").first.click()
    box = page.locator("#chat-gen #opt-max_new_tokens input")
    box.fill(str(n))
    box.press("Tab")


def send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def wait_done(page) -> str:
    status = page.locator("#chat-status")
    expect(status).to_contain_text("tokens", timeout=ANSWER_TIMEOUT)
    return status.inner_text()


def bubbles(page, elem_id: str) -> list[str]:
    return [b.inner_text() for b in page.locator(f"#{elem_id} .message-row").all()]


def attach_typed(page, entry: str) -> None:
    """Type an adapter entry (a path, or name=path) and attach it; a listed run: chat_helpers.attach."""
    box = page.locator("#chat-adapters input")
    box.click()
    box.fill(entry)
    box.press("Enter")
    page.locator("#chat-attach").click()


def test_chat_streams_regenerates_and_clears(page):
    load_bundled(page)
    set_max_new_tokens(page, 48)
    send(page, "What is the capital of France?")
    bot = page.locator("#chat-bot")
    seen = set()
    deadline = time.time() + ANSWER_TIMEOUT / 1000
    while "tokens" not in page.locator("#chat-status").inner_text():
        assert time.time() < deadline, "no answer"
        rows = bubbles(page, "chat-bot")
        if len(rows) >= 2 and rows[-1].strip():
            seen.add(rows[-1].strip())
        time.sleep(0.1)
    final = bubbles(page, "chat-bot")
    assert "Paris" in final[-1]
    assert len(seen - {final[-1].strip()}) >= 1, "the answer appeared at once instead of streaming"
    assert page.locator("#chat-input textarea").input_value() == ""

    page.locator("#chat-regenerate").click()
    expect(page.locator("#chat-status")).to_contain_text("answering")
    wait_done(page)
    rows = bubbles(page, "chat-bot")
    assert len(rows) == 2 and "Paris" in rows[1]  # the answer was replaced, not added

    page.locator("#chat-clear").click()
    expect(bot.locator(".message-row")).to_have_count(0)


def test_stop_ends_the_answer(page):
    load_bundled(page)
    set_max_new_tokens(page, 2000)
    send(page, "Write a very long story about a dragon and a knight.")
    expect(page.locator("#chat-bot .message-row")).to_have_count(2, timeout=ANSWER_TIMEOUT)
    page.wait_for_function(
        "() => { const r = document.querySelectorAll('#chat-bot .message-row');"
        " return r.length == 2 && r[1].innerText.trim().split(/\\s+/).length >= 3; }", timeout=ANSWER_TIMEOUT)
    page.locator("#chat-stop").click()
    status = wait_done(page)
    assert "(stopped)" in status
    tokens = int(status.split(":")[1].split("tokens")[0])
    assert tokens < 2000


def test_compare_base_and_identity_adapter_side_by_side(page, identity_run):
    load_bundled(page)
    page.locator("#chat-refresh").click()
    attach(page, identity_run)
    expect(page.locator("#chat-adapter-status")).to_contain_text(f"attached {identity_run}")
    set_max_new_tokens(page, 40)
    page.locator("#chat-mode").get_by_text("Compare").click()
    expect(page.locator("#chat-col-0")).to_be_visible()
    expect(page.locator("#chat-col-1")).to_be_visible()
    assert not page.locator("#chat-col-2").is_visible()
    send(page, "Who are you?")
    expect(page.locator("#chat-status")).to_contain_text("one batch —", timeout=ANSWER_TIMEOUT)
    base, tuned = steady_bubbles(page, "chat-col-0"), steady_bubbles(page, "chat-col-1")
    assert len(base) == 2 and len(tuned) == 2
    assert base[1].strip() and tuned[1].strip() and base[1] != tuned[1]
    # Multi-turn compare: each column keeps its own history.
    send(page, "And what can you do?")
    expect(page.locator("#chat-col-1 .message-row")).to_have_count(4, timeout=ANSWER_TIMEOUT)
    expect(page.locator("#chat-status")).to_contain_text("one batch —", timeout=ANSWER_TIMEOUT)
    base2, tuned2 = steady_bubbles(page, "chat-col-0"), steady_bubbles(page, "chat-col-1")
    assert base2[:2] == base and tuned2[:2] == tuned and len(base2) == 4


def test_bad_inputs_are_visible_messages(page, tmp_path, tiny_model_dir):
    load_bundled(page)
    status = page.locator("#chat-status")
    adapter_status = page.locator("#chat-adapter-status")
    # Adapter directory with missing files.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{}")
    attach_typed(page, str(tmp_path / "broken"))
    expect(adapter_status).to_contain_text("adapter weights are missing")
    # An adapter for another base model (the tiny model).
    page.reload()
    load_bundled(page)
    other = make_adapter(tiny_model_dir, tmp_path / "tiny-adapter", seed=1)
    attach_typed(page, f"tiny={other}")
    expect(adapter_status).to_contain_text("was trained on")
    expect(adapter_status).to_contain_text("but the loaded model is smollm2-135m-instruct")
    page.reload()
    load_bundled(page)
    # Invalid tools JSON.
    page.get_by_text("Tools (function calling)").click()
    tools = page.locator("#chat-tools .cm-content")
    tools.fill('[{"name": }]')
    send(page, "Hi")
    expect(status).to_contain_text("Tools JSON: not valid JSON (line 1")
    assert page.locator("#chat-input textarea").input_value() == "Hi"  # kept for another try
    # A template without tool support, given (valid) tools.
    tools.fill('[{"name": "get_weather"}]')
    choose(page, "wb-template", "llama2")
    page.locator("#chat-send").click()
    expect(status).to_contain_text("template 'llama2' has no tool-calling format")
    page.reload()
    load_bundled(page)
    # A prompt longer than the context (8192 tokens).
    page.locator("#chat-input textarea").fill("word " * 8300)
    page.locator("#chat-send").click()
    expect(status).to_contain_text("context of 8192 tokens")
    # A tool result when no tool was called.
    page.locator("#chat-observation textarea").fill("42")
    page.locator("#chat-observe").click()
    expect(status).to_contain_text("called no tool")
    # Nothing loaded.
    page.locator("#wb-unload").click()
    expect(page.locator("#wb-status")).to_contain_text("No model loaded")
    send(page, "Hi")
    expect(status).to_contain_text("no model is loaded")
    assert "Traceback" not in page.content()
