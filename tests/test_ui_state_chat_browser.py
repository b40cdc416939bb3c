"""What the app remembers, in a real headless Chromium against the real app (python webui.py) and a tiny random
model: every page load (a second page, a reload) shows the model, template, precision, engine and adapters the
server has loaded; models that need a download are marked; a merged model is named in Chat; Send and Regenerate
never race an answer that is streaming (issue 18, items 1, 5 and 9).

The app runs with an empty Hugging Face cache, so every registry model but the bundled one is "not downloaded".
"""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from chat_helpers import attach, chat_tab, make_adapter, new_page, steady_text
from conftest import start_app, stop_app

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.expect_timeout(60_000)]

TIMEOUT = 120_000  # ms: the machine's two cores are shared with other test runs
LONG = 1500  # max_new_tokens for an answer that streams until Stop


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, bundled_model_dir):
    """The real app with its own WORKBENCH_HOME and an empty Hugging Face cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
        server = start_app(tmp_path_factory.mktemp("app-home"))
    yield server
    stop_app(server)


@pytest.fixture(scope="module")
def tiny_run(app_server, tiny_model_dir) -> str:
    """A LoRA adapter of the tiny model as a finished run in the app's runs directory."""
    target = app_server.home / "runs" / "tiny-run"
    make_adapter(tiny_model_dir, target, seed=3)
    (target / "workbench_run.json").write_text(json.dumps({
        "stage": "sft", "finetuning_type": "lora", "base_model": str(tiny_model_dir), "dataset": "identity"}))
    return target.name


@pytest.fixture(scope="module")
def merged_model(app_server, tiny_model_dir) -> str:
    """The tiny model as a merged model in the app's exports folder (what the Export tab writes)."""
    target = app_server.home / "exports" / "tiny-merged"
    shutil.copytree(tiny_model_dir, target)
    (target / "workbench_export.json").write_text(json.dumps({"kind": "merged_model", "template": "smollm2"}))
    return str(target)


def pick(page, elem_id: str, option: str) -> None:
    choose(page, elem_id, option)


def type_model(page, text: str) -> None:
    box = page.locator("#wb-model input")
    box.click()
    box.fill(text)
    box.press("Enter")


def value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").input_value()


def options(page, elem_id: str) -> list[str]:
    page.locator(f"#{elem_id} input").click()
    found = [o.inner_text().split("\n")[-1].strip() for o in page.get_by_role("option").all()]  # without the ✓
    page.locator(f"#{elem_id} input").blur()  # closes the list (after Escape a click would not open it again)
    return found


def set_max_new_tokens(page, n: int) -> None:
    box = page.locator("#chat-gen #opt-max_new_tokens input")
    if not box.is_visible():
        page.locator("#chat-gen").get_by_text("Generation").first.click()
    box.fill(str(n))
    box.press("Tab")


def rows(page, elem_id: str = "chat-bot") -> int:
    return page.locator(f"#{elem_id} .message-row").count()


def streaming(page, elem_id: str = "chat-bot", count: int = 2) -> None:
    """Wait until the answer's bubble shows text (the answer is streaming, not done)."""
    page.wait_for_function(
        f"() => {{ const r = document.querySelectorAll('#{elem_id} .message-row');"
        f" return r.length == {count} && r[{count - 1}].innerText.trim().length > 0; }}", timeout=TIMEOUT)


def stop_and_wait(page, done: str) -> None:
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-status")).to_contain_text(done, timeout=TIMEOUT)
    expect(page.locator("#chat-send")).to_be_enabled()


def test_second_page_and_reload_show_what_the_server_has_loaded(browser, app_server, tiny_model_dir, tiny_run):
    a = new_page(browser, app_server)
    type_model(a, str(tiny_model_dir))
    pick(a, "wb-dtype", "float32")
    pick(a, "wb-template", "chatml")
    a.locator("#wb-load").click()
    expect(a.locator("#wb-status")).to_contain_text("✅ Loaded", timeout=TIMEOUT)
    chat_tab(a)
    attach(a, tiny_run)

    b = new_page(browser, app_server)
    a.reload()
    a.wait_for_selector("gradio-app", state="attached")
    for page in (b, a):
        status = page.locator("#wb-status")
        expect(status).to_contain_text(f"Loaded {tiny_model_dir}")
        expect(status).not_to_contain_text("No model loaded")
        expect(page.locator("#wb-model input")).to_have_value(str(tiny_model_dir))
        expect(page.locator("#wb-dtype input")).to_have_value("float32")
        expect(page.locator("#wb-template input")).to_have_value("chatml")  # the model's restore keeps it
        expect(page.locator("#wb-engine input")).to_have_value("transformers")
        chat_tab(page)
        expect(page.locator("#chat-adapter-status")).to_contain_text(f"Attached adapters: {tiny_run}")
        assert tiny_run in options(page, "chat-variant")
        # The picker holds what is attached: pressing Attach again keeps it rather than detaching it.
        expect(page.locator("#chat-adapters")).to_contain_text(tiny_run)
    b.locator("#chat-attach").click()
    expect(b.locator("#chat-adapter-status")).to_contain_text(f"Attached adapters: {tiny_run}")
    expect(b.locator("#chat-adapter-status")).not_to_contain_text("detached")
    b.context.close()
    a.context.close()


def test_model_list_marks_and_a_refused_engine_keep_the_truth(browser, app_server, tiny_model_dir):
    page = new_page(browser, app_server)
    listed = options(page, "wb-model")
    assert "qwen2.5-3b-instruct (not downloaded)" in listed
    assert "smollm2-135m-instruct" in listed  # the bundled model is on disk
    pick(page, "wb-model", "qwen2.5-0.5b-instruct (not downloaded)")
    expect(page.locator("#wb-template input")).to_have_value("qwen")  # the alias is the value: its template follows
    # vllm on a machine without a CUDA GPU: refused before anything is let go, and the line says what is loaded.
    pick(page, "wb-engine", "vllm")
    page.locator("#wb-load").click()
    status = page.locator("#wb-status")
    expect(status).to_contain_text("Could not load the model", timeout=TIMEOUT)
    expect(status).to_contain_text("vllm")
    expect(status).to_contain_text(f"Loaded {tiny_model_dir}")
    page.reload()
    expect(page.locator("#wb-model input")).to_have_value(str(tiny_model_dir))
    expect(page.locator("#wb-engine input")).to_have_value("transformers")
    expect(page.locator("#wb-template input")).to_have_value("chatml")
    page.context.close()


def test_send_and_regenerate_wait_for_the_streaming_answer(browser, app_server, tiny_model_dir, tiny_run):
    page = new_page(browser, app_server)
    expect(page.locator("#wb-status")).to_contain_text(f"Loaded {tiny_model_dir}")
    chat_tab(page)
    attach(page, tiny_run)
    set_max_new_tokens(page, LONG)
    send, regen, status = page.locator("#chat-send"), page.locator("#chat-regenerate"), page.locator("#chat-status")
    box = page.locator("#chat-input textarea")
    box.fill("Tell me a long story.")
    send.click()
    streaming(page)
    expect(send).to_be_disabled()
    expect(regen).to_be_disabled()
    # Enter in the box while it streams: refused with a note, the message kept.
    box.fill("And then?")
    box.press("Enter")
    expect(status).to_contain_text("still being generated")
    assert box.input_value() == "And then?"
    stop_and_wait(page, "(stopped)")
    assert rows(page) == 2

    # Regenerate, then Send while it streams: the regenerated answer is kept, then the message is answered.
    regen.click()
    streaming(page)
    expect(send).to_be_disabled()
    box.press("Enter")
    expect(status).to_contain_text("still being generated")
    stop_and_wait(page, "(stopped)")
    assert rows(page) == 2
    regenerated = steady_text(page.locator("#chat-bot .message-row").nth(1))
    set_max_new_tokens(page, 8)
    send.click()  # the kept message, "And then?"
    expect(page.locator("#chat-bot .message-row")).to_have_count(4, timeout=TIMEOUT)
    expect(send).to_be_enabled(timeout=TIMEOUT)
    expect(status).to_contain_text("✅")
    expect(status).not_to_contain_text("stopped")
    answers = page.locator("#chat-bot .message-row")
    assert answers.nth(1).inner_text() == regenerated and answers.nth(2).inner_text() == "And then?"
    assert box.input_value() == ""

    # Compare (base and the attached run, as the page load picked them): Enter during the batch gets the note too.
    set_max_new_tokens(page, LONG)
    page.locator("#chat-mode").get_by_text("Compare").click()
    # A server round trip right after an answer ended: on a loaded machine it takes longer than expect's 5 s default.
    expect(page.locator("#chat-col-1")).to_be_visible(timeout=TIMEOUT)
    box.fill("Who are you?")
    send.click()
    streaming(page, "chat-col-1")
    expect(send).to_be_disabled()
    box.fill("Second question")
    box.press("Enter")
    expect(status).to_contain_text("still being generated")
    assert box.input_value() == "Second question"
    stop_and_wait(page, "one batch —")
    page.context.close()


def test_a_merged_model_is_named_in_chat(browser, app_server, merged_model):
    page = new_page(browser, app_server)
    assert merged_model in options(page, "wb-model")  # exports made after the app started are listed
    pick(page, "wb-model", merged_model)
    page.locator("#wb-load").click()
    expect(page.locator("#wb-status")).to_contain_text(f"✅ Loaded {merged_model}", timeout=TIMEOUT)
    chat_tab(page)
    expect(page.locator("#chat-adapter-status")).to_contain_text("answers as tiny-merged")
    expect(page.locator("#chat-variant input")).to_have_value("tiny-merged")
    page.locator("#chat-mode").get_by_text("Compare").click()
    expect(page.locator("#chat-col-0")).to_contain_text("tiny-merged")
    expect(page.locator("#chat-prefer-0")).to_contain_text("tiny-merged")
    page.context.close()
