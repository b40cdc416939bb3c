"""Test set-up: an isolated WORKBENCH_HOME per session, a shared converted-model cache, offline hubs,
the real bundled model, a tiny random model with the same tokenizer, and the browser harness."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO_ROOT, SHARED_DATA, abort_leftover_jobs, make_tiny_model

# Nothing in tests may reach a hub. The converted bundled model is cached once per machine.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WORKBENCH_MODELS", str(Path.home() / ".cache" / "workbench" / "models"))
_SESSION_HOME = tempfile.mkdtemp(prefix="workbench-test-home-")
os.environ["WORKBENCH_HOME"] = _SESSION_HOME

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    from workbench.models.bundled import ensure_converted

    return Path(ensure_converted())


@pytest.fixture(scope="session")
def tiny_model_dir(bundled_model_dir, tmp_path_factory) -> Path:
    return make_tiny_model(bundled_model_dir, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def wb_home(tmp_path, monkeypatch) -> Path:
    """A fresh WORKBENCH_HOME for one test (the converted-model cache stays shared)."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def no_model_load(monkeypatch):
    """Bad input must be refused before weights load: loading one fails the test."""
    import workbench.models.loader as loader
    import workbench.train.run as run

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(loader, "load_model", refuse)
    monkeypatch.setattr(run, "load_reward_model", refuse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m workbench ARGS`` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO_ROOT,
    )


@pytest.fixture()
def cli():
    return run_cli


class AppServer:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path, home: Path):
        self.url, self.process, self.log_path, self.home = url, process, log_path, home

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_app(home: Path, extra_args: list[str] | None = None, timeout: float = 120, *,
              trains: bool = False) -> AppServer:
    """The app on a free loopback port. ``trains``: the test trains the real model in it, so the app (and its
    training jobs) stay on the worker's core: on every core, their torch threads spin against the other worker
    (the new-user journey took 903 s instead of ~400 s)."""
    port = free_port()
    log_path = home / "webui.log"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WORKBENCH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log_file = open(log_path, "w")
    with contextlib.nullcontext() if trains else every_core():
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "webui.py"), "--port", str(port), *(extra_args or [])],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"webui exited early:\n{log_path.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return AppServer(url, process, log_path, home)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"webui did not start in {timeout}s:\n{log_path.read_text()}")


def stop_app(server: AppServer) -> None:
    """Stop the app, and first any job it started that is still running (jobs run in sessions of their own and
    would outlive it)."""
    import signal

    abort_leftover_jobs(server.home / "runs")
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with every_core():  # the driver and Chromium it starts
        pw = sync_playwright().start()
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def app_server(request, tmp_path_factory, bundled_model_dir):
    """The real app (python webui.py) on a free loopback port, with its own WORKBENCH_HOME (``@pytest.mark.trains``:
    see :func:`start_app`)."""
    server = start_app(tmp_path_factory.mktemp("app-home"), trains=request.node.get_closest_marker("trains") is not None)
    yield server
    stop_app(server)


@pytest.fixture(autouse=True)
def expect_timeout(request):
    """``@pytest.mark.expect_timeout(ms)``: expect() waits that long instead of Playwright's default 5 s."""
    marker = request.node.get_closest_marker("expect_timeout")
    if marker is None:
        yield
        return
    from playwright.sync_api import expect

    expect.set_options(timeout=marker.args[0])
    yield
    expect.set_options(timeout=5_000)


@pytest.fixture()
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(app_server.url)
    pg.wait_for_selector("gradio-app", state="attached")
    yield pg
    context.close()


# The slowest files first (see `make test`'s --durations list), so that the two workers finish together instead of one
# running a long file alone at the end; xdist keeps this order with --no-loadscope-reorder (Makefile), where it would
# otherwise order files by their number of tests.
SLOWEST_FIRST = ("test_journey.py", "test_train.py", "test_export.py", "test_train_tab_browser.py",
                 "test_export_gguf.py", "test_preferences_browser.py", "test_ui_state_chat_browser.py",
                 "test_chat_tab.py", "test_data_probe_fixes.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep their own order


# Each xdist worker runs its in-process tests and the command-line processes it starts on its own share of the cores:
# unpinned, two workers' torch thread pools (one thread per core each) oversubscribe the cores and spin while
# descheduled (measured: test_train.py and test_export.py took twice as long). App servers and Chromium are started
# on every core (`every_core`): pinned with their test, the browser tests' answers and page updates slowed down.
_EVERY_CORE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
_WORKER_CORES: list[int] = []


def pytest_configure(config):
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if worker.startswith("gw") and 1 < count <= len(_EVERY_CORE) and os.environ.get("WORKBENCH_TEST_PIN", "1") == "1":
        index, share = int(worker[2:]), len(_EVERY_CORE) // count
        _WORKER_CORES[:] = _EVERY_CORE[index * share: (index + 1) * share]
        os.sched_setaffinity(0, set(_WORKER_CORES))


def pytest_terminal_summary(terminalreporter):
    """The machine, in the last lines of the run (what CI prints): timings and bfloat16 answers depend on it."""
    from workbench.machine import cpu_has_native_bf16, cpu_model

    terminalreporter.write_line(f"machine: {cpu_model()}, {len(_EVERY_CORE) or os.cpu_count()} cores, native "
                                f"bfloat16 {'yes' if cpu_has_native_bf16() else 'no'}")


@contextlib.contextmanager
def every_core():
    """Processes started inside run on every core (the worker itself is pinned again afterwards)."""
    if not _WORKER_CORES:
        yield
        return
    os.sched_setaffinity(0, set(_EVERY_CORE))
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(_WORKER_CORES))
