"""Fixes from a security probe, each tested where it failed before:

* ``jobs start`` never takes over a run folder that ``jobs`` did not make; ``jobs delete`` deletes only a
  job's run folder, and one holding an adapter or model only with ``--force`` (the UI passes it after its
  confirmation);
* ``webui`` and ``api`` refuse to serve beyond loopback (or over ``--share``) without ``--auth`` /
  ``--api-key``, unless ``--insecure-no-auth``; ``/health`` names the model and adapters only with the key;
* every numeric request field of the API refuses NaN and infinities with a 400 naming the field;
* a ``dataset_info.json`` entry's ``file_name`` stays inside the dataset folder (a symlink put there may
  point out; ``..`` may not).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.jobs import store as jobs
from workbench.jobs import runs
from workbench import rundir
from workbench.cli import main
from workbench.config.base import WorkbenchError

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.fixture()
def root(tmp_path, monkeypatch) -> Path:
    """The runs directory, for the library and for ``python -m workbench jobs`` alike."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("WORKBENCH_RUNS", str(path))
    return path


def cli_trained_run(root: Path, name: str) -> Path:
    """What ``python -m workbench train ... --output_dir runs/NAME`` leaves: no job files."""
    path = root / name
    (path / "checkpoint-10").mkdir(parents=True)
    (path / "config.yaml").write_text("learning_rate: 0.001\n")
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    (path / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"weights")
    (path / rundir.RUN_RECORD).write_text(json.dumps({"stage": "sft", "base_model": "m"}))
    return path


def finished_job_with_adapter(root: Path, name: str) -> jobs.Job:
    job = jobs.start_job("test", name, script(f"""
        from pathlib import Path
        out = Path({str(root / name)!r})
        (out / "adapter_config.json").write_text("{{}}")
        (out / "adapter_model.safetensors").write_bytes(b"weights")
    """), root=root)
    assert job.wait(60)["state"] == "finished", job.tail_log()
    return job


# ---- 1. jobs start / jobs delete ------------------------------------------------------------------------

def test_jobs_start_refuses_a_folder_it_did_not_make(root, capsys):
    run = cli_trained_run(root, "cli-run")
    rc = main(["jobs", "start", "--name", "cli-run", "--", PY, "-c", "print(1)"])
    err = capsys.readouterr().err
    assert rc == 1
    assert str(run) in err and "not made by `jobs`" in err
    assert (run / "config.yaml").read_text() == "learning_rate: 0.001\n"  # not written over
    assert not (run / jobs.STATUS_FILE).exists() and not (run / jobs.SPEC_FILE).exists()
    with pytest.raises(WorkbenchError, match="not made by `jobs`"):
        jobs.start_job("train", "cli-run", script("print(1)"), {"learning_rate": 1.0}, root=root)
    assert (run / "config.yaml").read_text() == "learning_rate: 0.001\n"
    # and `jobs delete` does not take it for a job either
    rc = main(["jobs", "delete", "--force", "cli-run"])
    assert rc == 1 and "is not a job's run folder" in capsys.readouterr().err
    assert (run / "adapter_model.safetensors").is_file()


def test_an_empty_folder_and_a_resumed_run_still_start(root):
    (root / "empty").mkdir()
    assert jobs.start_job("test", "empty", script("print('ok')"), root=root).wait(60)["state"] == "finished"
    # The Train tab's resume (reuse=True) continues a command-line run on purpose.
    run = cli_trained_run(root, "resumed")
    job = jobs.start_job("test", "resumed", script("print('resumed')"), {"resume_from_checkpoint": True},
                         reuse=True, root=root)
    assert job.wait(60)["state"] == "finished"
    assert (run / "adapter_model.safetensors").is_file()


def test_jobs_delete_only_deletes_a_jobs_run_folder(root, capsys):
    # status.json alone (copied or hand-made) does not make a job's run folder
    fake = root / "fake"
    fake.mkdir()
    (fake / jobs.STATUS_FILE).write_text(json.dumps({"name": "fake", "state": "finished"}))
    (fake / "notes.txt").write_text("mine")
    rc = main(["jobs", "delete", "--force", "fake"])
    err = capsys.readouterr().err
    assert rc == 1 and "is not a job's run folder" in err and str(fake) in err
    assert (fake / "notes.txt").is_file()


def test_jobs_delete_asks_for_force_when_the_run_holds_an_adapter(root, capsys):
    job = finished_job_with_adapter(root, "with-adapter")
    rc = main(["jobs", "delete", "with-adapter"])
    err = capsys.readouterr().err
    assert rc == 1 and "--force" in err and "adapter_model.safetensors" in err and str(job.path) in err
    assert (job.path / "adapter_model.safetensors").is_file()
    with pytest.raises(WorkbenchError, match="--force"):
        job.delete()
    assert main(["jobs", "delete", "--force", "with-adapter"]) == 0
    assert not job.path.exists()
    # a job that made no weights goes without --force, as before
    plain = jobs.start_job("test", "plain", script("print(1)"), root=root)
    plain.wait(60)
    assert main(["jobs", "delete", "plain"]) == 0 and not plain.path.exists()


def test_the_ui_delete_path_passes_force_after_its_confirmation(root):
    job = finished_job_with_adapter(root, "ui-job")
    cli_run = cli_trained_run(root, "ui-cli-run")
    for path in (job.path, cli_run):
        with pytest.raises(WorkbenchError, match="adapter or model"):
            runs.delete_run(path)
        assert path.is_dir()
        runs.delete_run(path, force=True)  # what the Train tab's "Yes, delete it" does
        assert not path.exists()


def test_weight_files_sees_checkpoints_but_does_not_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"x")
    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    (run / "log.txt").write_text("")
    (run / "linked").symlink_to(outside, target_is_directory=True)
    assert jobs.weight_files(run) == ["checkpoint-5/optimizer.pt"]


# ---- 2. binding beyond loopback ----------------------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
])
def test_is_loopback(host, loopback):
    from workbench.infer.api import is_loopback

    assert is_loopback(host) is loopback


@pytest.fixture()
def fake_gradio_launch(monkeypatch):
    """run_webui without a server: what launch() would have been given."""
    import workbench.ui.app as app_module

    launched: dict = {}

    class FakeApp:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.delenv("WORKBENCH_HOST", raising=False)
    monkeypatch.setattr(app_module, "prepare_bundled_model_in_background", lambda: None)
    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: FakeApp())
    return launched


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--host", "192.168.1.5"], ["--share"],
                                  ["--host", "0.0.0.0", "--share"]])
def test_webui_refuses_a_public_bind_without_auth(fake_gradio_launch, capsys, argv):
    assert main(["webui", *argv]) == 1
    err = capsys.readouterr().err
    assert "--auth" in err and "--insecure-no-auth" in err
    assert not fake_gradio_launch  # nothing was served


@pytest.mark.parametrize("argv, host, warned", [
    ([], "127.0.0.1", False),
    (["--host", "localhost"], "localhost", False),
    (["--host", "0.0.0.0", "--auth", "ann:secret"], "0.0.0.0", False),
    (["--share", "--auth", "ann:secret"], "127.0.0.1", False),
    (["--host", "0.0.0.0", "--insecure-no-auth"], "0.0.0.0", True),
])
def test_webui_serves_on_loopback_with_auth_or_when_told_insecure(fake_gradio_launch, capsys, argv, host, warned):
    assert main(["webui", *argv]) == 0
    assert fake_gradio_launch["server_name"] == host
    assert ("warning:" in capsys.readouterr().err) is warned


def test_webui_py_passes_the_flags_through(fake_gradio_launch, capsys, monkeypatch):
    """python webui.py --host 0.0.0.0: the entry point of the report."""
    import runpy

    from helpers import REPO_ROOT

    monkeypatch.setattr(sys, "argv", ["webui.py", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO_ROOT / "webui.py"), run_name="__main__")
    assert exc.value.code == 1 and "--auth" in capsys.readouterr().err and not fake_gradio_launch


@pytest.fixture()
def api_stops_before_loading(monkeypatch):
    """run_api up to the point where it would read the model."""
    import workbench.data.templates as templates

    def stop(*args, **kwargs):
        raise WorkbenchError("stopped before loading the model")

    monkeypatch.delenv("WORKBENCH_API_KEY", raising=False)
    monkeypatch.setattr(templates, "resolve_template", stop)


def test_api_refuses_a_public_bind_without_a_key(api_stops_before_loading, capsys):
    assert main(["api", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "--api-key" in err and "--insecure-no-auth" in err and "stopped before" not in err
    for argv in (["--host", "0.0.0.0", "--api-key", "k"], ["--host", "0.0.0.0", "--insecure-no-auth"], []):
        assert main(["api", *argv]) == 1
        assert "stopped before loading the model" in capsys.readouterr().err, argv


# ---- 2b / 3. the API: /health and non-finite numbers -------------------------------------------------------

class FakeEngine:
    """Enough of a ChatEngine for request checks; generating is not reached."""

    loaded = SimpleNamespace(label="secret-base-model")
    adapter_names = ["secret-adapter"]
    variants = [None, "secret-adapter"]

    def encode(self, *args, **kwargs):
        raise AssertionError("the request should have been refused before encoding")

    def check_variant(self, variant):
        pass

    def set_max_rows(self, rows):
        pass

    def stats(self):
        return {"engine": "fake", "rows": 0, "running": 0}

    def close(self, reason):
        pass


def api_client(api_key=None):
    from starlette.testclient import TestClient

    from workbench.infer.api import create_app

    return TestClient(create_app(FakeEngine(), api_key=api_key), raise_server_exceptions=False)


def test_health_names_models_only_with_the_key():
    client = api_client("k3y")
    anonymous = client.get("/health").json()
    assert anonymous["status"] == "ok" and "rows" in anonymous
    assert "secret" not in json.dumps(anonymous)
    wrong = client.get("/health", headers={"Authorization": "Bearer nope"}).json()
    assert "secret" not in json.dumps(wrong)
    keyed = client.get("/health", headers={"Authorization": "Bearer k3y"}).json()
    assert keyed["model"] == "secret-base-model" and keyed["adapters"] == ["secret-adapter"]
    # without a key set, the server is open anyway (loopback only), and /health says what it serves
    assert api_client(None).get("/health").json()["model"] == "secret-base-model"
    # every other route, known or not, wants the key
    assert client.get("/v1/models").status_code == 401
    assert client.get("/nothing-here").status_code == 401


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k", "repetition_penalty", "seed", "n", "max_tokens",
                                   "max_completion_tokens", "frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_naming_the_field(field, literal):
    client = api_client("k")
    # a raw body: Python's json module reads these literals, so the server sees float('nan') / inf
    body = ('{"model": "base", "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (field, literal))
    r = client.post("/v1/chat/completions", content=body.encode(),
                    headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"] and "finite" in error["message"]


# ---- 4. dataset files stay inside their folder -------------------------------------------------------------

ROWS = [{"instruction": "secret question", "input": "", "output": "secret answer"}]


def dataset_folder(tmp_path: Path, info: dict) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize("file_name", ["../outside/secret.json", "../../../../etc/passwd.json",
                                       "sub/../../outside/secret.json", "{tmp}/outside/secret.json",
                                       "~/secret.json"])
def test_file_names_that_leave_the_dataset_folder_are_refused(tmp_path, file_name):
    from workbench.config.data import DataArgs
    from workbench.data.loader import load_records
    from workbench.data.registry import get_spec, load_registry

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text(json.dumps(ROWS))
    (tmp_path / "data" / "sub").mkdir(parents=True)
    folder = dataset_folder(tmp_path, {"leak": {"file_name": file_name.format(tmp=tmp_path)}})
    for attempt in (lambda: load_registry(folder), lambda: get_spec("leak", folder),
                    lambda: load_records(DataArgs(dataset="leak", dataset_dir=str(folder)))):
        with pytest.raises(WorkbenchError, match=r"dataset 'leak': file_name .* is outside the dataset folder"):
            attempt()


def test_script_url_and_saved_entries_stay_inside_too(tmp_path):
    from workbench.data.registry import save_entry, spec_from_entry

    with pytest.raises(WorkbenchError, match="script_url '../x' is outside"):
        spec_from_entry("s", {"script_url": "../x"}, tmp_path)
    with pytest.raises(WorkbenchError, match="outside the dataset folder"):
        save_entry(tmp_path, "bad", {"file_name": "../bad.json"})
    assert not (tmp_path / "dataset_info.json").exists()
    # a hub id is not a path: unaffected
    assert spec_from_entry("h", {"hf_hub_url": "org/name"}, tmp_path).source == "org/name"


def test_files_inside_the_folder_and_links_the_user_made_still_load(tmp_path):
    from workbench.config.data import DataArgs
    from workbench.data.loader import load_records

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big.json").write_text(json.dumps(ROWS))
    folder = dataset_folder(tmp_path, {"inside": {"file_name": "sub/d.json"}, "linked": {"file_name": "big.json"},
                                       "tilde": {"file_name": "a~b.json"}})
    (folder / "sub").mkdir()
    (folder / "sub" / "d.json").write_text(json.dumps(ROWS))
    (folder / "a~b.json").write_text(json.dumps(ROWS))
    (folder / "big.json").symlink_to(outside / "big.json")
    for name in ("inside", "linked", "tilde"):
        records = load_records(DataArgs(dataset=name, dataset_dir=str(folder)))
        assert len(records) == 1 and "secret answer" in json.dumps(records[0].__dict__, default=str)
