"""Jobs with real subprocesses: files, exit codes, abort without orphans, re-attach, queue, bad input.

Small ``python -c`` scripts stand in for training wherever the trainer itself is not the point;
one test runs the real trainer on the tiny model through a job.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from workbench.jobs import store as jobs
from workbench.jobs import runs
from workbench import rundir
from workbench.config.base import WorkbenchError

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def raw_status(job: jobs.Job) -> dict:
    """status.json straight from disk: no liveness check, nothing that could move the queue."""
    return json.loads((job.path / "status.json").read_text())


def wait_raw(job: jobs.Job, states, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = raw_status(job)
        if st["state"] in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{job.name} did not reach {states} in {timeout}s: {raw_status(job)}\n{job.tail_log()}")


def wait_started(job: jobs.Job, timeout: float = 30) -> dict:
    """Wait until the supervisor has recorded the child's pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = raw_status(job)
        if st.get("pid"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"{job.name} has no pid after {timeout}s: {raw_status(job)}")


def wait_line(job: jobs.Job, line: str, timeout: float = 30) -> None:
    """Wait for a whole line of output (log.txt's first line repeats the command, which contains the text)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if line in job.tail_log(200).splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} not in {job.name}'s log after {timeout}s:\n{job.tail_log()}")


def wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written in {timeout}s")


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_gone(pids, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if not gone(p)]
    assert not alive, f"processes left behind: {[psutil.Process(p).cmdline() for p in alive]}"


@pytest.fixture()
def root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def no_leftovers(root):
    yield
    # Whatever a test started is stopped, so no process outlives the test run.
    for job in jobs.list_jobs(root):
        if job.state in ("queued", "running"):
            job.abort(grace=0.5)


def test_job_files_output_and_exit_code(root):
    argv = script("""
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
    """)
    job = jobs.start_job("test", "files", argv, {"learning_rate": 0.001, "dataset": "identity"}, root=root)
    st = job.wait(60)
    assert st["state"] == "finished" and st["exit_code"] == 0, job.tail_log()
    assert st["started"] <= st["ended"] and st["pid"] and st["pgid"] == st["pid"]
    log = job.tail_log(50)
    assert "to stdout" in log.splitlines() and "to stderr" in log.splitlines()
    assert (job.path / "command.txt").read_text().strip() == shlex.join(argv)
    assert shlex.split(job.command()) == argv
    assert yaml.safe_load((job.path / "config.yaml").read_text()) == {"learning_rate": 0.001, "dataset": "identity"}
    assert job.config()["dataset"] == "identity"
    assert json.loads((job.path / "job.json").read_text())["argv"] == argv
    assert [j.name for j in jobs.list_jobs(root)] == ["files"]
    assert jobs.get_job("files", root=root).status()["state"] == "finished"


def test_failed_job_names_its_error(root):
    job = jobs.start_job("test", "fails", script("""
        import sys
        print("loading data")
        print("error: dataset: 'nope' is not in data/dataset_info.json", file=sys.stderr)
        sys.exit(3)
    """), root=root)
    st = job.wait(60)
    assert st["state"] == "failed" and st["exit_code"] == 3
    assert "exited with code 3" in st["error"] and "dataset: 'nope' is not in" in st["error"]


def test_output_is_drained_while_the_job_runs(root):
    # 20 MB on stdout and stderr: a pipe nobody reads would block the child after 64 KiB.
    job = jobs.start_job("test", "chatty", script("""
        import sys
        line = "x" * 999 + "\\n"
        for i in range(10000):
            sys.stdout.write(line)
            sys.stderr.write(line)
        print("done writing")
    """), root=root)
    st = job.wait(120)
    assert st["state"] == "finished", job.tail_log()
    assert job.log_path.stat().st_size >= 20_000_000
    assert "done writing" in job.tail_log(5).splitlines()


def test_abort_stops_the_whole_process_tree(root, tmp_path):
    pids = tmp_path / "pids.txt"
    job = jobs.start_job("train", "tree", script(f"""
        import subprocess, sys, time
        # a grandchild that ignores SIGTERM, and one that escapes into a session of its own
        stubborn = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        open({str(pids)!r}, "w").write(f"{{stubborn.pid}} {{escaped.pid}}")
        print("training", flush=True)
        time.sleep(300)
    """), root=root)
    stubborn, escaped = map(int, wait_file(pids).split())
    st = wait_started(job)
    child, supervisor = st["pid"], st["supervisor_pid"]
    t0 = time.time()
    st = job.abort(grace=2)
    assert st["state"] == "aborted", st
    assert time.time() - t0 < 30
    assert_gone([child, stubborn, escaped, supervisor])
    assert not jobs.group_alive(st["pgid"])
    assert "abort requested" in job.tail_log()


def test_abort_waits_the_grace_period_then_kills(root):
    job = jobs.start_job("test", "stubborn", script("""
        import signal, time
        signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM, saving", flush=True))
        print("ready", flush=True)
        time.sleep(300)
    """), root=root)
    wait_line(job, "ready")
    t0 = time.time()
    st = job.abort(grace=1.5)
    took = time.time() - t0
    assert st["state"] == "aborted" and st["exit_code"] == -signal.SIGKILL
    assert took >= 1.5
    log = job.tail_log()
    assert "got SIGTERM, saving" in log.splitlines() and "did not stop in time" in log
    assert_gone([st["pid"]])


def test_abort_of_a_finished_job_changes_nothing(root):
    job = jobs.start_job("test", "quick", script("print('hi')"), root=root)
    assert job.wait(60)["state"] == "finished"
    assert job.abort()["state"] == "finished"


def test_queue_runs_one_exclusive_job_at_a_time_in_order(root, tmp_path):
    go = tmp_path / "go"
    first = jobs.start_job("train", "first", script(f"""
        import os, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
    """), root=root)
    second = jobs.start_job("train", "second", script("print('second ran')"), root=root)
    third = jobs.start_job("train", "third", script("print('third ran')"), root=root)
    side = jobs.start_job("export", "side", script("print('not queued')"), root=root)  # not exclusive
    assert first.status()["state"] == "running"
    assert second.status()["state"] == "queued" and second.status()["queue_position"] == 1
    assert third.status()["queue_position"] == 2
    assert side.wait(60)["state"] == "finished"  # ran beside the training job
    assert jobs.active_job("train", root).name == "first"

    cancelled = third.abort()
    assert cancelled["state"] == "aborted" and "cancelled" in cancelled["error"]
    assert cancelled["started"] is None and third.tail_log() == ""

    go.write_text("go")
    # Nothing here calls the jobs API while the queue moves: the first job's supervisor starts the second.
    done_first = wait_raw(first, ["finished"])
    done_second = wait_raw(second, ["finished"])
    assert done_second["started"] >= done_first["ended"] - 0.01
    assert "second ran" in second.tail_log().splitlines()
    assert raw_status(third)["state"] == "aborted"


def test_reattach_after_the_starting_process_exits(root):
    # A stand-in for the UI: starts a job and exits at once.
    ui = subprocess.run([PY, "-c", textwrap.dedent(f"""
        import sys
        from workbench.jobs import store as jobs
        from workbench import rundir
        jobs.start_job("train", "detached", {script("import time; time.sleep(2); print('survived the UI')")!r},
                       root={str(root)!r})
    """)], capture_output=True, text=True, timeout=60)
    assert ui.returncode == 0, ui.stderr
    job = jobs.get_job("detached", root=root)
    assert job.status()["state"] in ("running", "finished")
    st = job.wait(60)
    assert st["state"] == "finished" and st["exit_code"] == 0
    assert "survived the UI" in job.tail_log().splitlines()


def test_a_job_that_died_without_an_end_status_is_failed_with_its_log(root):
    job = jobs.start_job("train", "killed", script("""
        import time
        print("step 1/100 loss 2.3", flush=True)
        time.sleep(300)
    """), root=root)
    waiting = jobs.start_job("train", "waiting", script("print('ran after the dead one')"), root=root)
    wait_line(job, "step 1/100 loss 2.3")
    st = wait_started(job)
    # As if the machine's OOM killer took both processes: nobody writes an end status.
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    jobs.kill_group(st["pgid"], signal.SIGKILL)
    assert_gone([st["supervisor_pid"], st["pid"]])
    assert raw_status(job)["state"] == "running"  # what the files still say
    settled = job.status()
    assert settled["state"] == "failed"
    assert "without recording an end status" in settled["error"] and "step 1/100 loss 2.3" in settled["error"]
    # Settling the dead job freed the device: the queued one starts.
    assert waiting.wait(60)["state"] == "finished"
    assert "ran after the dead one" in waiting.tail_log().splitlines()


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "", "..", ".hidden", "a b", "x" * 200,
                                  "run\\name", "-flag"])
def test_bad_run_names_are_refused(root, tmp_path, name):
    with pytest.raises(WorkbenchError, match="not allowed"):
        jobs.start_job("test", name, script("print(1)"), root=root)
    assert not (tmp_path / "escape").exists()
    assert list(root.iterdir()) == [] if root.exists() else True


def test_bad_commands_and_names_in_use(root):
    with pytest.raises(WorkbenchError, match="non-empty list"):
        jobs.start_job("test", "shell", "echo hi", root=root)  # a string would need a shell
    with pytest.raises(WorkbenchError, match="non-empty list"):
        jobs.start_job("test", "empty", [], root=root)
    with pytest.raises(WorkbenchError, match="kind"):
        jobs.start_job("../x", "kind", script("print(1)"), root=root)
    missing = jobs.start_job("test", "missing", ["/no/such/program", "--flag"], root=root)
    st = missing.wait(60)
    assert st["state"] == "failed" and "cannot start /no/such/program" in st["error"]
    with pytest.raises(WorkbenchError, match="already exists"):
        jobs.start_job("test", "missing", script("print(1)"), root=root)
    # reuse (resuming a run) is allowed once the previous job has ended; the log grows on
    again = jobs.start_job("test", "missing", script("print('second attempt')"), reuse=True, root=root)
    assert again.wait(60)["state"] == "finished"
    assert "cannot start /no/such/program" in again.tail_log(50) and "second attempt" in again.tail_log(50)
    with pytest.raises(WorkbenchError, match="no job named"):
        jobs.get_job("nothing-here", root=root)


def test_unwritable_runs_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(WorkbenchError, match=r"cannot create the run directory .*a-file/runs/r1"):
        jobs.start_job("test", "r1", script("print(1)"), root=blocker / "runs")


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs) to fill up; needs root and mount rights (skipped otherwise)."""
    where = tmp_path / "small-disk"
    if not _mount_tmpfs(where, "size=1m"):
        pytest.skip("needs root with permission to mount a tmpfs")
    yield where
    for job in jobs.list_jobs(where):
        if job.state in ("queued", "running"):
            job.abort(grace=0.5)
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_while_the_job_writes(small_disk):
    # The "training" fills the disk its run directory is on; the job fails and status.json says why.
    job = jobs.start_job("train", "fills-disk", script("""
        print("saving checkpoint", flush=True)
        with open("checkpoint.bin", "wb") as f:
            for _ in range(64):
                f.write(b"\\0" * 65536)
                f.flush()
    """), cwd=small_disk / "fills-disk", root=small_disk)
    st = job.wait(60)
    assert st["state"] == "failed" and st["exit_code"] not in (0, None)
    assert "is full" in st["error"] and str(job.path) in st["error"]
    assert "Free some space" in st["error"]
    # A start on the full disk is refused with the reason, and leaves nothing half-made.
    with pytest.raises(WorkbenchError, match="No space left on device"):
        jobs.start_job("train", "no-room", script("print(1)"), root=small_disk)
    assert not (small_disk / "no-room").exists()


def test_read_only_runs_directory(tmp_path):
    where = tmp_path / "ro-disk"
    if not _mount_tmpfs(where, "size=1m,ro"):
        pytest.skip("needs root with permission to mount a tmpfs")
    try:
        with pytest.raises(WorkbenchError, match="Read-only file system"):
            jobs.start_job("test", "r1", script("print(1)"), root=where)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_progress_returns_only_new_complete_lines(root):
    job = jobs.start_job("test", "progress", script("print(1)"), root=root)
    job.wait(60)
    path = job.progress_path
    assert job.read_progress(0) == ([], 0, False)
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    first = job.read_progress(0)
    assert [e["step"] for e in first.entries] == [1, 2] and not first.reset
    assert job.read_progress(first.offset).entries == []  # the half line waits
    with open(path, "a") as f:
        f.write('ss": 1.2}\n{"step": 4, "loss": 1.1}\n')
    second = job.read_progress(first.offset)
    assert [e["step"] for e in second.entries] == [3, 4]
    path.write_text('{"step": 1, "loss": 2.0}\n')  # a resumed run rewrote the file
    third = job.read_progress(second.offset)
    assert third.reset and [e["step"] for e in third.entries] == [1]


def test_tail_log_keeps_the_end_and_progress_bar_state(root):
    job = jobs.start_job("test", "tail", script("""
        import sys
        for i in range(5000):
            print(f"line {i}")
        sys.stdout.write("bar 10%\\rbar 50%\\rbar 100%\\n")
    """), root=root)
    job.wait(60)
    lines = job.tail_log(3).splitlines()
    assert lines[-1] == "bar 100%" or lines[-2] == "bar 100%"
    assert "line 4999" in job.tail_log(4)
    assert len(job.tail_log(10).splitlines()) == 10


def test_delete_only_after_the_job_ended(root, tmp_path):
    go = tmp_path / "go"
    job = jobs.start_job("test", "deletable", script(f"""
        import os, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
    """), root=root)
    with pytest.raises(WorkbenchError, match="abort it before deleting"):
        job.delete()
    go.write_text("go")
    job.wait(60)
    job.delete()
    assert not job.path.exists()


def test_runs_config_diff_and_summaries(root):
    a = jobs.start_job("train", "run-a", script("print(1)"), {"dataset": "identity", "learning_rate": 1e-3,
                                                               "output_dir": "/x/a"}, root=root)
    a.wait(60)
    b = jobs.start_job("train", "run-b", script("print(1)"), {"dataset": "identity", "learning_rate": 5e-4,
                                                               "lora_rank": 8, "output_dir": "/x/b"}, root=root)
    b.wait(60)
    header, rows = runs.config_diff([a.path, b.path])
    assert header == ["option", "run-a", "run-b"]
    # lora_rank 8 is the default, so only the learning rate differs once defaults are filled in
    assert rows == [["learning_rate", 1e-3, 5e-4]]
    summaries = runs.list_runs(root)
    assert [s.name for s in summaries] == ["run-b", "run-a"]
    assert summaries[0].state == "finished" and summaries[0].progress == 1.0 and summaries[0].dataset == "identity"


def test_list_adapters_skips_reward_model_runs(root):
    """A reward model (stage rm) is a sequence-classification adapter: not for Chat, Evaluate or Export."""
    for name, stage in (("chat-sft", "sft"), ("chat-dpo", "dpo"), ("scorer-rm", "rm")):
        path = root / name
        path.mkdir(parents=True)
        (path / rundir.RUN_RECORD).write_text(json.dumps({"stage": stage, "base_model": "base"}))
        (path / rundir.ADAPTER_CONFIG).write_text("{}")
    listed = {name: (where, base) for name, where, base in runs.list_adapters(root)}
    assert listed == {"chat-sft": (str(root / "chat-sft"), "base"), "chat-dpo": (str(root / "chat-dpo"), "base")}


def test_training_job_end_to_end_with_the_tiny_model(tmp_path, tiny_model_dir, root):
    """The real trainer as a job: progress lines arrive while it runs, the adapter is listed after."""
    run_dir = root / "tiny-sft"
    config = {
        "model_name_or_path": str(tiny_model_dir), "dataset": "identity", "stage": "sft", "finetuning_type": "lora",
        "max_steps": 6, "logging_steps": 1, "per_device_train_batch_size": 2, "cutoff_len": 64,
        "output_dir": str(run_dir), "save_steps": 3,
    }
    job = jobs.start_job("train", "tiny-sft", [PY, "-m", "workbench", "train", str(run_dir / "config.yaml")],
                         config, root=root)
    seen, offset = [], 0
    deadline = time.time() + 300
    while time.time() < deadline:
        chunk = job.read_progress(offset)
        seen += chunk.entries
        offset = chunk.offset
        if job.status()["state"] in jobs.FINAL_STATES:
            break
        time.sleep(0.5)
    seen += job.read_progress(offset).entries
    st = job.status()
    assert st["state"] == "finished", job.tail_log(40)
    assert [e["step"] for e in seen if e.get("kind") == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(e["total_steps"] == 6 and e["loss"] > 0 for e in seen)
    assert ("tiny-sft", str(run_dir), str(tiny_model_dir)) in runs.list_adapters(root)
    summary = runs.list_runs(root)[0]
    assert (summary.name, summary.state, summary.stage, summary.step, summary.total_steps) == \
        ("tiny-sft", "finished", "sft", 6, 6)
    assert summary.loss == seen[-1]["loss"] and summary.duration > 0


def test_jobs_command_line(cli, tmp_path):
    env = {"WORKBENCH_RUNS": str(tmp_path / "runs")}
    started = cli("jobs", "start", "--name", "cli-run", "--kind", "train", "--", PY, "-c", "print('from the cli job')",
                  env=env, timeout=120)
    assert started.returncode == 0, started.stderr
    assert "cli-run:" in started.stdout
    job = jobs.get_job("cli-run", root=tmp_path / "runs")
    assert job.wait(60)["state"] == "finished"
    listed = cli("jobs", "list", env=env, timeout=120)
    assert listed.returncode == 0 and "cli-run" in listed.stdout and "finished" in listed.stdout
    log = cli("jobs", "log", "cli-run", env=env, timeout=120)
    assert "from the cli job" in log.stdout.splitlines()
    bad = cli("jobs", "start", "--name", "../up", "--", PY, "-c", "1", env=env, timeout=120)
    assert bad.returncode == 1 and "error: run name '../up' is not allowed" in bad.stderr
    missing = cli("jobs", "abort", "ghost", env=env, timeout=120)
    assert missing.returncode == 1 and "no job named 'ghost'" in missing.stderr
