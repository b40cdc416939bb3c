"""Two browser pages chatting at once share the model's decode steps (issue 15): in a real headless Chromium against
the real app (python webui.py) and a tiny random model, both pages' answers stream before either finishes, and a
compare (base + an adapter) in one page streams its columns while the other page's chat answer streams.

The tiny model answers gibberish until max_new_tokens, so every answer streams until Stop (a repetition penalty
makes it visible from the first token: greedily, the random model starts with dozens of newlines, which a chat
bubble does not show). "At the same time": every page starts answering (its status says so) within a minute; then,
sampling the bubbles, every watched answer grew between two samples, TOGETHER times, while every page still
generated (Send disabled). A Send that waits for another page's whole answer fails at the first check (the page
shows Gradio's "queue: 1/1") or, where an answer of LONG tokens ends within that minute, at the second (the first
page finished; the samples are the evidence).
"""

from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import attach, chat_tab, make_adapter, new_page

pytestmark = [pytest.mark.browser, pytest.mark.expect_timeout(60_000)]

TIMEOUT = 120_000  # ms: the machine's two cores are shared with other test runs
LONG = 1500  # max_new_tokens: the answers stream until Stop
PENALTY = 2.0  # repetition_penalty: no run of invisible newlines before the first word
TOGETHER = 2  # sample intervals in which every watched answer grew


@pytest.fixture(scope="module")
def tiny_run(app_server, tiny_model_dir) -> str:
    """A LoRA adapter of the tiny model as a finished run in the app's runs directory."""
    target = app_server.home / "runs" / "tiny-run"
    make_adapter(tiny_model_dir, target, seed=3)
    (target / "workbench_run.json").write_text(json.dumps({
        "stage": "sft", "finetuning_type": "lora", "base_model": str(tiny_model_dir), "dataset": "identity"}))
    return target.name


def load_tiny(page, model_dir) -> None:
    """Load the tiny model in float32 from the top bar (unless this server has it loaded already)."""
    status = page.locator("#wb-status")
    if f"Loaded {model_dir}" in status.inner_text():
        return
    box = page.locator("#wb-model input")
    box.click()
    box.fill(str(model_dir))
    box.press("Enter")
    choose(page, "wb-dtype", "float32")
    page.locator("#wb-load").click()
    expect(status).to_contain_text(f"✅ Loaded {model_dir}", timeout=TIMEOUT)


def set_generation(page) -> None:
    """Long answers, visible from their first token."""
    if not page.locator("#chat-gen #opt-max_new_tokens input").is_visible():
        page.locator("#chat-gen").get_by_text("Generation").first.click()
    for name, value in (("max_new_tokens", LONG), ("repetition_penalty", PENALTY)):
        box = page.locator(f"#chat-gen #opt-{name} input")
        box.fill(str(value))
        box.press("Tab")


def answer_length(page, elem_id: str) -> int:
    """Characters in the answer bubble of a one-turn conversation (0 while it has none)."""
    return page.evaluate(
        "(id) => { const r = document.querySelectorAll('#' + id + ' .message-row');"
        " return r.length == 2 ? r[1].innerText.trim().length : 0; }", elem_id)


def stream_together(watched: dict[str, tuple], pages: dict, timeout_s: float = 120) -> list[dict]:
    """Sample every watched answer (name → (page, chatbot id)) until, TOGETHER times, all of them grew between two
    samples while every page in ``pages`` (name → page) still generated; returns the samples. Fails, with the samples as
    evidence, when a page finished first or the answers did not grow together in time."""
    samples: list[dict] = []
    together = 0
    last = {name: 0 for name in watched}
    deadline = time.monotonic() + timeout_s
    while together < TOGETHER:
        now = {name: answer_length(page, elem_id) for name, (page, elem_id) in watched.items()}
        finished = [name for name, page in pages.items() if page.locator("#chat-send").is_enabled()]
        samples.append(now)
        assert not finished, f"page {finished} finished before the answers streamed together; lengths: {samples}"
        if all(last[n] > 0 and now[n] > last[n] for n in watched):
            together += 1
        last = now
        assert time.monotonic() < deadline, f"the answers did not stream together; lengths: {samples}"
        time.sleep(0.2)
    return samples


def send_all(sends: dict[str, tuple]) -> None:
    """Type into every page (name → (page, message, what its status says once it answers)) first, then press Send
    in each right after the other, and see every page start answering while the others do."""
    for page, text, _ in sends.values():
        page.locator("#chat-input textarea").fill(text)
    for page, _, _ in sends.values():
        page.locator("#chat-send").click()
    for name, (page, _, answering) in sends.items():
        others = ", ".join(n for n in sends if n != name)
        expect(page.locator("#chat-status"), f"page {name} did not start answering while page {others} answered"
               ).to_contain_text(answering, timeout=60_000)
        expect(page.locator("#chat-stop")).to_be_enabled()


def test_two_pages_chatting_answer_at_the_same_time(browser, app_server, tiny_model_dir):
    a = new_page(browser, app_server)
    load_tiny(a, tiny_model_dir)
    b = new_page(browser, app_server)
    expect(b.locator("#wb-status")).to_contain_text(f"Loaded {tiny_model_dir}")
    for page in (a, b):
        chat_tab(page)
        set_generation(page)

    send_all({"A": (a, "Tell me a long story.", "is answering"), "B": (b, "Write a long poem.", "is answering")})
    samples = stream_together({"A": (a, "chat-bot"), "B": (b, "chat-bot")}, {"A": a, "B": b})

    for page in (a, b):
        page.locator("#chat-stop").click()
    for name, page in (("A", a), ("B", b)):
        expect(page.locator("#chat-status")).to_contain_text("(stopped)", timeout=TIMEOUT)
        expect(page.locator("#chat-send")).to_be_enabled()
        assert page.locator("#chat-bot .message-row").count() == 2
        # The stopped answer is kept: at least what was on screen while it streamed.
        assert answer_length(page, "chat-bot") >= samples[-1][name] > 0
    a.context.close()
    b.context.close()


def test_a_compare_in_one_page_streams_while_another_page_chats(browser, app_server, tiny_model_dir, tiny_run):
    a = new_page(browser, app_server)
    load_tiny(a, tiny_model_dir)
    chat_tab(a)
    attach(a, tiny_run)
    b = new_page(browser, app_server)
    chat_tab(b)
    for page in (a, b):
        set_generation(page)
    a.locator("#chat-mode").get_by_text("Compare").click()
    expect(a.locator("#chat-col-0")).to_contain_text("base")
    expect(a.locator("#chat-col-1")).to_contain_text(tiny_run)

    send_all({"A": (a, "Who are you?", "answering in one batch"), "B": (b, "Tell me a long story.", "is answering")})
    watched = {"A base": (a, "chat-col-0"), f"A {tiny_run}": (a, "chat-col-1"), "B": (b, "chat-bot")}
    samples = stream_together(watched, {"A": a, "B": b})

    for page in (a, b):
        page.locator("#chat-stop").click()
    expect(a.locator("#chat-status")).to_contain_text("one batch —", timeout=TIMEOUT)
    expect(a.locator("#chat-status")).to_contain_text("(stopped)")
    expect(b.locator("#chat-status")).to_contain_text("(stopped)", timeout=TIMEOUT)
    for page in (a, b):
        expect(page.locator("#chat-send")).to_be_enabled()
    for name, (page, elem_id) in watched.items():
        assert page.locator(f"#{elem_id} .message-row").count() == 2
        assert answer_length(page, elem_id) >= samples[-1][name] > 0, name
    a.context.close()
    b.context.close()
