"""Where data goes and what the app says about it, in a real headless Chromium against the real app (issue 18):
the default dataset folder is in the Workbench home and starts with the demo sets; saving writes there, never
into the project's data/; an upload that fails is named by its own name; stale messages go; a task of your own
is evaluated by picking its data and metric; the Chinese UI shows server messages in Chinese; empty tables have
real headers, the command preview wraps and the learning rate steps by 1e-5."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from browser_helpers import choose
from helpers import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PROJECT_DATA = REPO_ROOT / "data"


def project_data_tree() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(PROJECT_DATA.iterdir()) if p.is_file()}


def box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def pick(page, elem_id: str, option: str) -> None:
    choose(page, elem_id, option)


def open_data_tab(page) -> None:
    page.get_by_role("tab", name="Data").click()
    page.locator("#wb-data-dir").wait_for()


def headers(page, elem_id: str) -> list[str]:
    cells = page.locator(f"#{elem_id} thead th")
    cells.first.wait_for()
    return [h.strip() for h in cells.all_inner_texts() if h.strip()]


@pytest.mark.expect_timeout(60_000)
def test_the_dataset_folder_is_in_the_home_with_the_demo_sets_and_saving_stays_there(page, app_server, tmp_path):
    before = project_data_tree()
    home_data = app_server.home / "data"
    open_data_tab(page)
    expect(box(page, "wb-data-dir")).to_have_value(str(home_data))
    expect(page.locator("#wb-data-dir")).to_contain_text("data/ in the Workbench home")  # says where files go
    page.locator("#wb-data-dataset input").click()
    for demo in ("identity", "demo_qa", "demo_translation_zh_en_test"):
        expect(page.get_by_role("option", name=demo, exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    assert json.loads((home_data / "dataset_info.json").read_text()) == json.loads(
        (PROJECT_DATA / "dataset_info.json").read_text())
    assert headers(page, "wb-data-rows") == ["instruction", "input", "output"]  # not Gradio's 1 2 3

    # Save without a name: ❌; once a file opens, that stale message goes.
    page.locator("#wb-data-save").click()
    save_status = page.locator("#wb-data-save-status")
    expect(save_status).to_contain_text("open a registered dataset or upload a file first")
    upload = tmp_path / "my pairs.csv"
    upload.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(upload))
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("upload my pairs.csv")
    expect(save_status).to_have_text("")
    page.locator("#wb-data-preview").click()
    expect(status).to_contain_text("2 examples")
    box(page, "wb-data-name").fill("my_pairs")
    page.locator("#wb-data-save").click()
    # The home's folder had a dataset_info.json: it is kept as .bak, and the message says so.
    expect(save_status).to_contain_text("dataset_info.json is kept as dataset_info.json.bak): my_pairs")
    expect(save_status).to_contain_text(str(home_data / "dataset_info.json"))
    assert json.loads((home_data / "dataset_info.json").read_text())["my_pairs"]["file_name"] == "my_pairs.csv"
    assert (home_data / "my_pairs.csv").read_text() == upload.read_text()
    assert (home_data / "dataset_info.json.bak").is_file()
    assert project_data_tree() == before  # the project's data/ is never written

    # A new folder has no registry yet: nothing is said about a .bak that was not written.
    fresh = tmp_path / "fresh"
    box(page, "wb-data-dir").fill(str(fresh))
    box(page, "wb-data-dir").press("Enter")
    expect(status).to_contain_text("No dataset_info.json with datasets in this folder yet")
    box(page, "wb-data-name").fill("again")
    expect(box(page, "wb-data-dir")).to_have_value(str(fresh))
    page.locator("#wb-data-save").click()
    expect(save_status).to_contain_text("wherever datasets are picked: again")
    expect(save_status).not_to_contain_text(".bak")
    assert not (fresh / "dataset_info.json.bak").exists() and (fresh / "dataset_info.json").is_file()


@pytest.mark.expect_timeout(60_000)
def test_a_failed_upload_is_named_by_its_own_name(page, tmp_path):
    open_data_tab(page)
    broken = tmp_path / "broken rows.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n')
    page.locator("#wb-data-upload input[type=file]").set_input_files(str(broken))
    status = page.locator("#wb-data-status")
    expect(status).to_contain_text("broken rows.jsonl line 2")
    text = status.inner_text()
    assert not re.search(r"/\S*broken rows\.jsonl", text), text  # no temporary folder in front of the name
    assert "gradio" not in text.lower()
    # Save says why nothing is open, with the same name.
    box(page, "wb-data-name").fill("x")
    page.locator("#wb-data-save").click()
    save_status = page.locator("#wb-data-save-status")
    expect(save_status).to_contain_text("no file is open: upload broken rows.jsonl could not be opened: broken rows"
                                        ".jsonl line 2")
    assert "gradio" not in save_status.inner_text().lower()


@pytest.mark.expect_timeout(60_000)
def test_a_task_of_your_own_is_picked_not_typed(page, app_server, tmp_path):
    page.get_by_role("tab", name="Evaluate").click()
    tab = page.locator("#wb-eval")
    command = tab.locator("#wb-eval-command")
    expect(command).to_contain_text("--task qa")
    expect(tab.locator("#wb-eval-command .cm-lineWrapping")).to_have_count(1)  # the long command wraps
    assert headers(page, "wb-eval-matrix") == ["task", "metric", "base"]
    tab.locator("#wb-eval-own").get_by_text("Your own tasks").first.click()
    assert headers(page, "wb-eval-own-table") == ["task", "data", "metric"]

    # A registered dataset of the home's folder, scored with F1.
    pick(page, "wb-eval-own-dataset", "demo_qa_test")
    pick(page, "wb-eval-own-metric", "F1")
    box(page, "wb-eval-own-name").fill("qa_f1")
    tab.locator("#wb-eval-own-add").click()
    own_status = tab.locator("#wb-eval-own-status")
    expect(own_status).to_contain_text("qa_f1 · demo_qa_test · F1")
    expect(command).to_contain_text("--task qa_f1=demo_qa_test --metric qa_f1=f1")

    # An uploaded file; its name becomes the task's name.
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "Say yes", "input": "", "output": "yes"}]
    data = tmp_path / "greetings.json"
    data.write_text(json.dumps(rows))
    tab.locator("#wb-eval-own-file input[type=file]").set_input_files(str(data))
    # Gradio shows the name's stem and extension in two elements; some builds put a space between them.
    expect(tab.locator("#wb-eval-own-file")).to_contain_text(re.compile(r"greetings\s*\.json"))
    pick(page, "wb-eval-own-metric", "ROUGE-L")
    tab.locator("#wb-eval-own-add").click()
    expect(tab.locator("#wb-eval-own-table")).to_contain_text("greetings.json (uploaded)")
    expect(command).to_contain_text(re.compile(r"--task greetings=/\S+/greetings\.json"))
    expect(command).to_contain_text("--metric qa_f1=f1 --metric greetings=rougeL")

    # Removing a task takes it out of the command.
    pick(page, "wb-eval-own-pick", "qa_f1")
    tab.locator("#wb-eval-own-remove").click()
    expect(command).not_to_contain_text("qa_f1")
    expect(command).to_contain_text("--task greetings=")


@pytest.mark.expect_timeout(60_000)
def test_the_learning_rate_steps_by_a_sensible_amount(page):
    page.get_by_role("tab", name="Train").click()
    field = page.locator("#opt-learning_rate input").first
    expect(field).to_have_value(re.compile(r"^(5e-05|0\.00005)$"))
    assert float(field.get_attribute("step")) == pytest.approx(1e-5)
    field.press("ArrowUp")
    assert float(field.input_value()) == pytest.approx(6e-5)


@pytest.mark.expect_timeout(60_000)
def test_the_chinese_ui_shows_server_messages_in_chinese(browser, app_server):
    context = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app_server.url)
        page.get_by_role("tab", name="数据").click()
        expect(page.locator("#wb-data-dir")).to_contain_text("Workbench 主目录")
        page.locator("#wb-data-preview").click()
        status = page.locator("#wb-data-status")
        expect(status).to_contain_text("❌ 请先打开已注册的数据集或上传文件")
        expect(status).not_to_contain_text("open a registered dataset")
        pick(page, "wb-data-dataset", "identity")
        expect(status).to_contain_text("已打开。请检查列映射")
        expect(status).to_contain_text("identity (identity.json)")  # names stay as they are
        page.get_by_role("tab", name="评测").click()
        page.locator("#wb-eval-own").get_by_text("自定义任务").first.click()
        page.locator("#wb-eval-own-add").click()
        expect(page.locator("#wb-eval-own-status")).to_contain_text("❌ 请为任务选择已注册的数据集或上传数据文件")
        page.locator("#wb-eval-tasks").get_by_text("问答（EM）").click()
        page.locator("#wb-eval-tasks").get_by_text("翻译 中→英（BLEU）").click()
        page.locator("#wb-eval-tasks").get_by_text("摘要（ROUGE-1）").click()
        page.locator("#wb-eval-start").click()
        expect(page.locator("#wb-eval-status")).to_contain_text("❌ 请至少选择一个任务")
        assert "__i18n__" not in page.locator("#wb-eval-status").inner_text()
    finally:
        context.close()
