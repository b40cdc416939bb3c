"""Optional GPU packages (DeepSpeed, Liger, vLLM): one make command installs each without touching torch, and every
option that needs one names that command; enable_liger_kernel is refused where Liger's kernels cannot run."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from helpers import REPO_ROOT
from workbench.config.base import OptionError


def make_dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra, package", [("deepspeed", "deepspeed"), ("liger", "liger-kernel"), ("vllm", "vllm")])
def test_each_extra_is_one_make_command_that_holds_torch(extra, package):
    requirements = (REPO_ROOT / f"requirements-{extra}.txt").read_text()
    lines = [line.split("#")[0].strip() for line in requirements.splitlines()]
    assert [line for line in lines if line and line.startswith(package)], requirements
    assert not any(line.startswith("torch") for line in lines)  # nothing here may ask for another torch
    assert "CUDA" in requirements and f"make extras EXTRAS={extra}" in requirements
    dry = make_dry_run("extras", f"EXTRAS={extra}")
    if dry.returncode != 0 and "No such file" in dry.stderr:
        pytest.skip("make is not available")
    assert dry.returncode == 0, dry.stderr
    install = next(line for line in dry.stdout.splitlines() if f"-r requirements-{extra}.txt" in line)
    assert '"torch==$(.venv/bin/python -c' in install  # pinned to the torch already installed
    if extra == "vllm":  # vLLM pins its own transformers: it gets its own environment
        assert install.startswith(".venv/vllm/bin/python -m pip install")


def test_the_default_install_stays_lean_and_unknown_extras_are_refused():
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    assert not any(name in requirements for name in ("deepspeed", "liger", "vllm"))
    dry = make_dry_run("extras", "EXTRAS=flash")
    if "No such file" in dry.stderr:
        pytest.skip("make is not available")
    assert dry.returncode != 0 and "unknown extra 'flash'" in dry.stderr and "deepspeed liger vllm" in dry.stderr
    plain_run = make_dry_run("run").stdout
    assert not any(f"requirements-{extra}.txt" in plain_run for extra in ("deepspeed", "liger", "vllm"))


def test_deepspeed_names_its_install_command():
    from workbench.config.train import check_deepspeed_installed

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(Exception) as err:
        check_deepspeed_installed()
    assert "deepspeed package is not installed" in str(err.value)
    assert "make extras EXTRAS=deepspeed" in str(err.value)


def test_enable_liger_kernel_is_refused_without_a_cuda_gpu():
    import torch

    from workbench.config.train import parse_train_config

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    for values in ({"enable_liger_kernel": True}, {"use_liger_kernel": "true"},
                   {"enable_liger_kernel": True, "device": "cuda"}):
        with pytest.raises(OptionError) as err:
            parse_train_config({"dataset": "identity", **values})
        assert err.value.option == "enable_liger_kernel"
        assert "CUDA GPUs" in str(err.value) and "make extras EXTRAS=liger" in str(err.value)
    # off is fine under either name; liger_kernel_config is Workbench's to choose
    assert parse_train_config({"dataset": "identity", "use_liger_kernel": False}).train.enable_liger_kernel is False
    with pytest.raises(OptionError, match="enable_liger_kernel"):
        parse_train_config({"dataset": "identity", "liger_kernel_config": {"rope": True}})


def test_enable_liger_kernel_names_the_package_command_on_a_gpu_without_it(monkeypatch):
    import torch

    from workbench.config.train import check_liger_kernel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(OptionError, match="liger-kernel package is not installed; install it with: make extras "
                                          "EXTRAS=liger"):
        check_liger_kernel("auto")


def test_enable_liger_kernel_reaches_training_arguments_as_use_liger_kernel(tmp_path, monkeypatch):
    from workbench.config import train as train_config
    from workbench.config.train import parse_train_config
    from workbench.train.run import training_arguments

    monkeypatch.setattr(train_config, "check_liger_kernel", lambda device="auto": None)  # as on a CUDA machine
    cfg = parse_train_config({"dataset": "identity", "enable_liger_kernel": True})
    kwargs = training_arguments(cfg, tmp_path, "cuda", has_eval=False)
    assert kwargs["use_liger_kernel"] is True
    assert kwargs["liger_kernel_config"] == {"fused_linear_cross_entropy": False}
    assert "use_liger_kernel" not in training_arguments(parse_train_config({"dataset": "identity"}), tmp_path, "cpu",
                                                        has_eval=False)
    assert cfg.to_dict()["enable_liger_kernel"] is True  # recorded in config.yaml under LLaMA-Factory's name
