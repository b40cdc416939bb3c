"""The app shell in a real headless Chromium: pick the bundled model, load it, see its status."""

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def set_model(page, text: str) -> None:
    box = page.locator("#wb-model input")
    box.click()
    box.fill(text)
    box.press("Enter")


def test_load_bundled_model_shows_status(page, app_server):
    assert "127.0.0.1" in app_server.url
    page.get_by_text("Workbench").first.wait_for()
    model_box = page.locator("#wb-model input")
    assert model_box.input_value() == "smollm2-135m-instruct"
    page.locator("#wb-load").click()
    status = page.locator("#wb-status")
    status.get_by_text("Loaded smollm2-135m-instruct").wait_for(timeout=120_000)
    assert "cpu" in status.inner_text()
    page.locator("#wb-unload").click()
    status.get_by_text("No model loaded").wait_for()


def test_bad_model_path_is_a_visible_message(page, tmp_path):
    set_model(page, str(tmp_path / "no-such-model"))
    page.locator("#wb-load").click()
    status = page.locator("#wb-status")
    expect(status).to_contain_text("Could not load the model", timeout=60_000)
    assert "does not exist" in status.inner_text()
    assert "Traceback" not in status.inner_text()


def test_unset_numbers_are_blank_not_zero(page):
    """Optional numbers (max_samples, eval_steps, ...) start blank: the browser would otherwise draw None as 0,
    and an untouched form would send that 0 (below their minimum of 1) and be refused."""
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#wb-train-form #opt-max_samples input")).to_have_value("", timeout=30_000)
    page.locator("#wb-train-preview").click()
    message = page.locator("#wb-train-message")
    expect(message).to_contain_text("Cannot preview")
    expect(message).to_contain_text("dataset")  # the one thing left to fill in, not a phantom 0
    expect(message).not_to_contain_text("below the minimum")
