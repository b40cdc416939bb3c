"""Reliability fixes: a diverged training run fails (never "finished") and leaves no broken weights; chat refuses
an adapter with NaN/inf weights; a read-only output_dir is refused before the model loads; a SIGKILLed job is
reported as killed, with out-of-memory named only on the kernel's own evidence.

Real paths throughout: divergence comes from real training on the tiny model (float16 weights and a huge
learning rate overflow to inf/NaN), the read-only folder is a real read-only mount, the OOM kill is a real kill by
the kernel in a memory-limited cgroup. The few stand-ins are said where they are used.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from helpers import tiny_values as base_tiny_values

from workbench.jobs import store as jobs
from workbench.config.base import OptionError, WorkbenchError
from workbench.config.train import parse_train_config
from workbench.train.callbacks import ProgressCallback, read_progress

PY = sys.executable


def tiny_values(model_dir: Path, out: Path, **overrides) -> dict:
    return base_tiny_values(model_dir, out, **{"max_steps": 4, **overrides})


# float16 weights with a learning rate of 1e30: the first update overflows the LoRA weights to inf, and the next
# forward pass turns them into NaN. A real divergence, produced by real training (no mock).
DIVERGES = {"infer_dtype": "float16", "learning_rate": 1e30}


def train(values: dict) -> dict:
    from workbench.train.run import run_training

    return run_training(parse_train_config(values), log=lambda msg: None)


def assert_nothing_saved_as_done(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir())
    for name in ("workbench_run.json", "adapter_model.safetensors", "all_results.json", "train_results.json"):
        assert name not in left, left
    assert not [n for n in left if n.startswith("checkpoint-")], left


# ---- 1. non-finite training ---------------------------------------------------------------------------------

def test_a_diverging_run_is_stopped_at_the_step_and_fails(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(WorkbenchError) as caught:
        train(tiny_values(tiny_model_dir, out, **DIVERGES))
    message = str(caught.value)
    assert message.startswith("training diverged at step 2 of 4: the gradient norm became nan"), message
    assert "q_proj.lora_A.default.weight" in message  # the broken weights are named
    assert "lower learning_rate (it is 1e+30" in message and "infer_dtype float32" in message
    assert "\n" not in message  # one line: the job status shows it whole
    steps = [e for e in read_progress(out / "progress.jsonl") if e["kind"] == "train"]
    assert [e["step"] for e in steps] == [1, 2]  # stopped at once, not run to step 4
    # transformers' NaN filter would log the NaN loss as 0.0; it is recorded as unknown, not as a perfect loss.
    assert math.isfinite(steps[0]["loss"]) and steps[1]["loss"] is None
    assert_nothing_saved_as_done(out)


def test_broken_weights_are_not_saved_in_a_checkpoint(tiny_model_dir, tmp_path):
    # No logging step before the save: the save itself finds the NaN weights and refuses to write them.
    out = tmp_path / "run"
    with pytest.raises(WorkbenchError, match=r"^training diverged by step 2 of 2: trainable weights hold NaN/inf: "
                                             r"model\.layers\.0\.self_attn\.q_proj\.lora_A"):
        train(tiny_values(tiny_model_dir, out, **DIVERGES, max_steps=2, logging_steps=100, save_steps=2))
    assert_nothing_saved_as_done(out)


def test_broken_weights_at_the_end_fail_the_run(tiny_model_dir, tmp_path):
    # Nothing is logged or saved during training: the check after training catches it before the final save.
    out = tmp_path / "run"
    with pytest.raises(WorkbenchError, match=r"^training ended at step 2 with NaN/inf in its trainable weights: "
                                             r".*The result was not saved\. Try again with a lower learning_rate"):
        train(tiny_values(tiny_model_dir, out, **DIVERGES, max_steps=2, logging_steps=100, save_strategy="no"))
    assert_nothing_saved_as_done(out)


def test_a_diverging_training_job_ends_as_failed_with_the_message(tiny_model_dir, tmp_path):
    root = tmp_path / "runs"
    run_dir = root / "diverges"
    config = tiny_values(tiny_model_dir, run_dir, **DIVERGES)
    job = jobs.start_job("train", "diverges", [PY, "-m", "workbench", "train", str(run_dir / "config.yaml")],
                         config, root=root)
    try:
        st = job.wait(300)
    finally:
        if job.status()["state"] in ("queued", "running"):
            job.abort(grace=0.5)
    assert st["state"] == "failed" and st["exit_code"] == 1, job.tail_log(40)
    assert "error: training diverged at step 2 of 4" in st["error"] and "learning_rate" in st["error"]
    assert "Traceback" not in job.tail_log(200)
    assert_nothing_saved_as_done(run_dir)


def _callback_and_state(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "args"), use_cpu=True, report_to="none")
    state = TrainerState(max_steps=10, global_step=3)
    return ProgressCallback(tmp_path / "progress.jsonl", echo=None), args, state, TrainerControl()


def test_an_overflowed_gradient_norm_alone_does_not_stop_training(tmp_path):
    # fp16 loss scaling (a GPU feature) logs grad_norm inf and skips that update: the weights stay finite and
    # training goes on. The callback is driven directly with a small real module, as no CPU run can produce it.
    import torch

    callback, args, state, control = _callback_and_state(tmp_path)
    model = torch.nn.Linear(4, 4)
    callback.on_log(args, state, control, logs={"loss": 1.5, "grad_norm": float("inf"), "learning_rate": 1e-4},
                    model=model)
    assert callback.diverged is None and not control.should_training_stop
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    state.global_step = 4
    callback.on_log(args, state, control, logs={"loss": 1.5, "grad_norm": float("nan"), "learning_rate": 1e-4},
                    model=model)
    assert control.should_training_stop and not control.should_save
    assert callback.diverged.startswith("training diverged at step 4 of 10: the gradient norm became nan; "
                                        "trainable weights hold NaN/inf: weight (1 of 16 values)")


def test_a_logged_nan_loss_stops_training(tmp_path):
    # With logging_nan_inf_filter off, transformers logs the NaN loss itself (driven directly, like the test above).
    import torch

    callback, args, state, control = _callback_and_state(tmp_path)
    callback.on_log(args, state, control, logs={"loss": float("nan"), "grad_norm": 0.5, "learning_rate": 1e-4},
                    model=torch.nn.Linear(2, 2))
    assert control.should_training_stop
    assert callback.diverged.startswith("training diverged between steps 1 and 3 of 10: the training loss became nan")
    assert read_progress(tmp_path / "progress.jsonl")[0]["loss"] is None


# ---- chat refuses adapters with non-finite weights -------------------------------------------------------------

@pytest.fixture(scope="module")
def good_and_nan_adapters(tiny_model_dir, tmp_path_factory):
    """Two real LoRA adapters for the tiny model; one has a NaN written into one of its saved tensors (what a
    diverged run that saved anyway would leave)."""
    from safetensors.torch import load_file, save_file

    from chat_helpers import make_adapter

    root = tmp_path_factory.mktemp("finite-adapters")
    good = make_adapter(tiny_model_dir, root / "good", seed=1)
    bad = make_adapter(tiny_model_dir, root / "bad", seed=2)
    weights = bad / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("nan")
    tensors[name][1, 0] = float("inf")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return {"good": str(good), "bad": str(bad), "tensor": name}


def test_chat_refuses_an_adapter_with_nan_weights_and_keeps_the_rest(tiny_model_dir, good_and_nan_adapters):
    from workbench.config.model import ModelArgs
    from workbench.infer.session import ModelManager

    paths = good_and_nan_adapters
    manager = ModelManager()
    manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir)), {"good": paths["good"]})
    # What the Chat tab's Attach button calls; its error display shows a WorkbenchError's message as is.
    with pytest.raises(WorkbenchError) as caught:
        manager.set_adapters({"good": paths["good"], "diverged": paths["bad"]})
    message = str(caught.value)
    assert message.startswith(f"adapter diverged ({paths['bad']}) has non-finite weights and cannot be used")
    assert f"tensor {paths['tensor']} in {paths['bad']}/adapter_model.safetensors holds 2 NaN/inf value(s)" in message
    assert manager.adapters == {"good": paths["good"]}  # nothing changed
    with pytest.raises(WorkbenchError, match="adapter other .* has non-finite weights"):
        manager.attach("other", paths["bad"])
    assert manager.adapters == {"good": paths["good"]}


def test_nan_adapter_is_refused_by_every_loader_path(tiny_model_dir, good_and_nan_adapters, monkeypatch):
    from workbench.config.model import ModelArgs
    from workbench.infer import session
    from workbench.models.loader import load_model

    bad = good_and_nan_adapters["bad"]
    args = ModelArgs(model_name_or_path=str(tiny_model_dir))
    # Chat from the command line / API: refused before the model loads (loading it would fail the test).
    monkeypatch.setattr(session, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    with pytest.raises(WorkbenchError, match=r"adapter x \(.*\) has non-finite weights"):
        session.load_for_chat(args, {"x": bad})
    monkeypatch.undo()
    # Evaluation and export attach through the loader.
    with pytest.raises(WorkbenchError, match=r"adapter y \(.*\) has non-finite weights"):
        load_model(args, adapters={"y": bad})
    load_model(args, adapters={"fine": good_and_nan_adapters["good"]})


# ---- 2. read-only output_dir ---------------------------------------------------------------------------------

@pytest.fixture()
def read_only_dir(tmp_path):
    """A real read-only folder: a read-only tmpfs mount (root could write into a chmod'ed one)."""
    where = tmp_path / "read-only"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root with permission to mount a read-only tmpfs")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_output_dir_is_refused_before_the_model_loads(tiny_model_dir, read_only_dir, no_model_load):
    with pytest.raises(OptionError, match=r"^output_dir: .*/read-only is not writable \(Read-only file system\); "
                                          r"choose another output_dir"):
        train(tiny_values(tiny_model_dir, read_only_dir))
    # A folder inside it was already refused (it cannot be created); it still is.
    with pytest.raises(OptionError, match=r"cannot create .*/read-only/sub \(Read-only file system\)"):
        train(tiny_values(tiny_model_dir, read_only_dir / "sub"))


def test_the_write_probe_catches_what_os_access_misses(read_only_dir, monkeypatch):
    # os.access is made to answer "writable" (as it may on a network filesystem): the temp-file probe still fails.
    from workbench.train import outputs

    monkeypatch.setattr(outputs.os, "access", lambda *a, **k: True)
    with pytest.raises(OptionError, match=r"is not writable \(Read-only file system\)"):
        outputs.prepare_output_dir(read_only_dir, overwrite=False, resuming=False)


def test_a_folder_without_write_permission_is_refused(tmp_path):
    from workbench.train import outputs

    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (the read-only mount tests cover it)")
        with pytest.raises(OptionError, match=r"is not writable \(Permission denied\)"):
            outputs.prepare_output_dir(folder, overwrite=False, resuming=False)
    finally:
        folder.chmod(0o755)


# ---- 3. SIGKILL: killed, and out of memory only on evidence ---------------------------------------------------

def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def test_a_sigkilled_job_is_reported_as_killed_not_as_out_of_memory(tmp_path):
    job = jobs.start_job("test", "killed", script("""
        import os, signal
        print("working", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """), root=tmp_path / "runs")
    st = job.wait(60)
    assert st["state"] == "failed" and st["exit_code"] == -9
    error = st["error"]
    assert error.startswith("killed (SIGKILL) by something outside Workbench: a `kill -9`"), error
    assert "out of memory?" not in error and "or the system running out of memory" in error
    from workbench.jobs.supervisor import count_oom_kills, oom_counter

    counter = oom_counter()
    if counter is not None and count_oom_kills(counter) is not None:
        assert f"no out-of-memory kill was recorded in its cgroup ({counter})" in error
    else:
        assert "check the system log (dmesg)" in error


@pytest.fixture()
def small_memory_cgroup():
    """A real memory cgroup (v1) below this process's, limited to 64 MiB; skipped where one cannot be made."""
    memory = next((line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if "memory" in line.split(":")[1].split(",")), None)
    parent = Path("/sys/fs/cgroup/memory") / (memory or "").lstrip("/")
    if memory is None or not (parent / "memory.oom_control").is_file():
        pytest.skip("needs a cgroup v1 memory controller (this test's way to trigger a real OOM kill)")
    group = parent / f"workbench-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(64 << 20))
    except OSError as exc:
        if group.exists():
            group.rmdir()
        pytest.skip(f"cannot make a memory cgroup here ({exc})")
    yield group
    for _ in range(50):  # the killed process may take a moment to leave it
        try:
            group.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def test_an_oom_killed_job_names_the_out_of_memory_killer(tmp_path, small_memory_cgroup):
    # The job moves itself into the 64 MiB cgroup and allocates 512 MiB: the kernel's OOM killer stops it.
    job = jobs.start_job("test", "oom", script(f"""
        import os
        open({str(small_memory_cgroup / "cgroup.procs")!r}, "w").write(str(os.getpid()))
        print("allocating", flush=True)
        block = bytearray(512 << 20)
        print("still alive", flush=True)
    """), root=tmp_path / "runs")
    st = job.wait(120)
    assert st["state"] == "failed" and st["exit_code"] == -9, job.tail_log()
    assert st["error"].startswith("killed (SIGKILL), most likely by the kernel's out-of-memory killer: it stopped 1 "
                                  "process(es) in the job's cgroup while the job ran"), st["error"]
    assert "more memory than the machine" in st["error"]
