"""``--launch``: run the same training command under ``accelerate launch`` (several processes,
DeepSpeed, several machines). The argv is built here, printed, and run without a shell."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from workbench.config.base import option_flags
from workbench.config.train import LaunchArgs, TrainConfig, resolve_deepspeed_config



def launched_train_argv(cfg: TrainConfig, launch: LaunchArgs, config_path: str | Path | None,
                        overrides: dict[str, Any], output_dir: Path) -> list[str]:
    """The ``accelerate launch`` argv of a --launch run: every process reads the same config file and flags, with
    one output_dir for all of them (a default name has a timestamp)."""
    child = {**overrides, "output_dir": str(output_dir)}
    train_args = ([str(Path(config_path).resolve())] if config_path else []) + option_flags(child)
    return accelerate_argv(cfg, launch, train_args)


def accelerate_argv(cfg: TrainConfig, launch: LaunchArgs, train_args: list[str]) -> list[str]:
    """The ``accelerate launch`` command for this run; ``train_args`` follow ``-m workbench train``."""
    argv = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        argv += ["--config_file", os.path.expanduser(launch.accelerate_config)]
    if cfg.train.deepspeed:
        argv += ["--use_deepspeed", "--deepspeed_config_file", str(resolve_deepspeed_config(cfg.train.deepspeed))]
    elif launch.num_processes > 1 or launch.multi_gpu:
        # Data parallel: one process per GPU, or gloo ranks on a CPU-only machine.
        argv += ["--multi_gpu"]
    argv += ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines)]
    if launch.num_machines > 1:
        argv += ["--machine_rank", str(launch.machine_rank), "--main_process_ip", str(launch.main_process_ip)]
    if launch.main_process_port:
        argv += ["--main_process_port", str(launch.main_process_port)]
    precision = "bf16" if cfg.train.bf16 else "fp16" if cfg.train.fp16 else "no"
    argv += ["--mixed_precision", precision, "--dynamo_backend", "no"]
    argv += ["-m", "workbench", "train", *train_args]
    return argv


def run_launch(argv: list[str], env_extra: dict[str, str], *, announce: bool = True) -> int:
    if announce:
        print("Launching: " + shlex.join(argv), flush=True)
    env = {**os.environ, **env_extra}
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:  # the children got the same SIGINT; report like a normal interrupt
        return 130
