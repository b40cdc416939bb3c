"""Random LoRA adapters for chat tests: real PEFT adapters on real (tiny or bundled) models, with
non-zero B matrices so every adapter changes the answers."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path


def make_adapter(model_dir: Path, out: Path, *, seed: int, r: int = 4, targets=("q_proj", "v_proj"),
                 base_name: str | None = None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    if base_name is not None:  # what a workbench training run records
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@contextlib.contextmanager
def api_server(model_dir: Path, log_dir: Path, *extra: str, key: str):
    """``python -m workbench api`` on a free loopback port (template smollm2, max_tokens 16 unless ``extra``
    overrides them); yields its URL and stops its process group afterwards."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import free_port
    from helpers import REPO_ROOT

    port = free_port()
    log_path = log_dir / "api.log"
    argv = [sys.executable, "-m", "workbench", "api", "--model", str(model_dir), "--port", str(port),
            "--api-key", key, "--template", "smollm2", "--max-tokens", "16", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited early:\n{log_path.read_text()}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"api did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# -- the Chat tab in a real browser (Playwright) ------------------------------------------------------------

def new_page(browser, app_server):
    """A page of the app in its own browser context, once the page load has shown the server's state."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    page.wait_for_selector("gradio-app", state="attached")
    expect(page.locator("#wb-status")).to_contain_text(re.compile("Loaded|No model loaded"))  # the page's state came
    return page


def chat_tab(page) -> None:
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-send").wait_for()


def attach(page, run: str) -> None:
    """Attach the finished run ``run`` (unless it is attached already)."""
    from playwright.sync_api import expect

    summary = page.locator("#chat-adapter-status")
    expect(summary).to_contain_text("Attached adapters")
    if f"Attached adapters: {run}" in summary.inner_text():
        return
    picker = page.locator("#chat-adapters")  # its own list, as browser_helpers.choose (entries hold more than the name)
    picker.locator("input").first.click()
    picker.get_by_role("option").filter(has_text=run).first.click()
    page.locator("#chat-attach").click()
    expect(summary).to_contain_text(f"attached {run}")


def steady(read, page, quiet_ms: int = 1000, timeout_ms: int = 30_000):
    """``read()`` once it has not changed for ``quiet_ms``: a status line that says an answer ended can be drawn
    before a Chatbot draws that answer's last words (seen on a loaded machine)."""
    import time

    value, since = read(), time.monotonic()
    deadline = since + timeout_ms / 1000
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
        again = read()
        if again != value:
            value, since = again, time.monotonic()
        elif time.monotonic() - since >= quiet_ms / 1000:
            return value
    raise AssertionError(f"kept changing for {timeout_ms} ms: {value!r}")


def steady_text(locator) -> str:
    return steady(locator.inner_text, locator.page)


def steady_bubbles(page, elem_id: str) -> list[str]:
    """The texts of a Chatbot's messages, once drawn (see :func:`steady`)."""
    return steady(lambda: [b.inner_text() for b in page.locator(f"#{elem_id} .message-row").all()], page)
