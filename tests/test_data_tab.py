"""The Data tab in a real headless Chromium against the real app: open, upload, map, preview, save."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import expect

import browser_helpers
from helpers import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def open_data_tab(page) -> None:
    page.get_by_role("tab", name="Data").click()
    page.locator("#wb-data-dir").wait_for()


def set_folder(page, folder) -> None:
    box = page.locator("#wb-data-dir textarea, #wb-data-dir input").first
    box.fill(str(folder))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    browser_helpers.choose(page, elem_id, option)


def dropdown_value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").input_value()


def test_registered_dataset_preview_highlights_trained_tokens(page, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(REPO_ROOT / "data" / "identity.json", folder / "identity.json")
    (folder / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    open_data_tab(page)
    set_folder(page, folder)
    choose(page, "wb-data-dataset", "identity")
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("identity (identity.json)")
    assert dropdown_value(page, "wb-data-col-prompt") == "instruction"
    assert dropdown_value(page, "wb-data-col-response") == "output"
    expect(page.locator("#wb-data-rows")).to_contain_text("Who are you?")
    page.locator("#wb-data-preview").click()
    expect(status).to_contain_text("60 examples", timeout=60_000)
    expect(status).to_contain_text("template smollm2")
    rendered = page.locator("#wb-data-rendered")
    expect(rendered).to_contain_text("<|im_start|>assistant")
    # The trained span is its own highlighted element, holding the answer and the end-of-turn token.
    expect(rendered).to_contain_text("trained")
    trained = rendered.locator(".token.highlighted")
    expect(trained).to_have_count(1)
    assert trained.inner_text() == ("I am {{name}}, an AI assistant developed by {{author}}. How can I help you "
                                    "today?<|im_end|>")
    expect(rendered.locator(".token:not(.highlighted)").filter(has_text="Who are you?")).to_have_count(1)
    expect(page.locator("#wb-data-stats")).to_contain_text("60 examples")
    page.locator("#wb-data-hist .js-plotly-plot").wait_for(timeout=30_000)
    expect(page.locator("#wb-data-hist")).to_contain_text("cutoff_len = 1024")


@pytest.mark.expect_timeout(60_000)  # 2 shared cores: an upload's first answer can take more than 5 s
def test_upload_detect_map_preview_save(page, tmp_path):
    folder = tmp_path / "registry"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"old": {"file_name": "old.json"}}, indent=2))
    upload = tmp_path / "qa pairs.csv"
    upload.write_text("question,answer,source\nWhat is 2+2?,4,math\nCapital of France?,Paris,geo\n"
                      "Largest planet?,Jupiter,astro\n")
    open_data_tab(page)
    set_folder(page, folder)
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(upload))
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("upload qa pairs.csv")
    expect(status).to_contain_text("alpaca")
    assert dropdown_value(page, "wb-data-col-prompt") == "question"
    assert dropdown_value(page, "wb-data-col-response") == "answer"
    page.locator("#wb-data-preview").click()
    expect(status).to_contain_text("3 examples", timeout=60_000)
    expect(page.locator("#wb-data-rendered")).to_contain_text("What is 2+2?")

    name_box = page.locator("#wb-data-name textarea, #wb-data-name input").first
    name_box.fill("my_qa")
    page.locator("#wb-data-save").click()
    save_status = page.locator("#wb-data-save-status")
    expect(save_status).to_contain_text("Saved and listed wherever datasets are picked (the previous "
                                        "dataset_info.json is kept as dataset_info.json.bak): my_qa", timeout=30_000)
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["old"] == {"file_name": "old.json"}
    assert info["my_qa"] == {"file_name": "my_qa.csv", "columns": {"prompt": "question", "response": "answer"}}
    assert (folder / "my_qa.csv").read_text() == upload.read_text()
    assert json.loads((folder / "dataset_info.json.bak").read_text()) == {"old": {"file_name": "old.json"}}
    assert dropdown_value(page, "wb-data-dataset") == "my_qa"  # listed at once

    # Saving the same name again: a clear message, nothing overwritten.
    before = (folder / "dataset_info.json").read_bytes()
    page.locator("#wb-data-save").click()
    expect(save_status).to_contain_text("already exists")
    assert (folder / "dataset_info.json").read_bytes() == before


@pytest.mark.expect_timeout(60_000)
def test_bad_uploads_are_clear_messages(page, tmp_path):
    open_data_tab(page)
    status = page.locator("#wb-data-status")
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(binary))
    expect(status).to_contain_text("not a text file")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n')
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(broken))
    expect(status).to_contain_text("broken.jsonl line 2")
    expect(status).to_contain_text("not valid JSON")
    assert "Traceback" not in status.inner_text()


def test_convert_seed_task_in_the_ui(page, tmp_path, shared_data):
    folder = tmp_path / "converted"
    open_data_tab(page)
    set_folder(page, folder)
    page.get_by_text("Convert seed-task data").click()
    choose(page, "wb-conv-task", "squad_v2")
    page.locator("#wb-conv-name textarea, #wb-conv-name input").first.fill("squad_small")
    page.locator("#wb-conv-input textarea, #wb-conv-input input").first.fill(
        str(shared_data / "eval" / "squad_v2_dev_2articles.json"))
    page.locator("#wb-conv-max input").fill("12")
    page.locator("#wb-conv-run").click()
    conv_status = page.locator("#wb-conv-status")
    expect(conv_status).to_contain_text("dropped 320: unanswerable", timeout=60_000)
    expect(conv_status).to_contain_text("wrote 12 rows")
    rows = json.loads((folder / "squad_small.json").read_text())
    assert len(rows) == 12 and rows[0]["instruction"].startswith("Please answer the question in the context above")
    assert json.loads((folder / "dataset_info.json").read_text()) == {"squad_small": {"file_name": "squad_small.json"}}
    assert dropdown_value(page, "wb-data-dataset") == "squad_small"
    # Again under the same name: refused, nothing written.
    page.locator("#wb-conv-run").click()
    expect(conv_status).to_contain_text("already exists")
