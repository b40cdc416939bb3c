"""``python -m workbench train [CONFIG.yaml] [--key value ...] [--launch --num_processes N]``."""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from workbench.config.base import OptionError, WorkbenchError, add_arguments, load_yaml
from workbench.config.data import DataArgs
from workbench.config.model import ModelArgs
from workbench.config.train import (IGNORED_KEYS, UNSUPPORTED_KEYS, FinetuningArgs, LaunchArgs, TrainArgs,
                                    TrainConfig, parse_train_config)
from workbench.config.base import option_fields


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML file with options (LLaMA-Factory style); flags override it")
    for cls in (ModelArgs, DataArgs, FinetuningArgs, TrainArgs, LaunchArgs):
        add_arguments(parser, cls)
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true", default=argparse.SUPPRESS,
                        help="with --launch: print the accelerate launch command and exit (checks run, nothing "
                             "is written)")
    # LLaMA-Factory flags we ignore or refuse still parse, so the warning/error names them.
    for key in (*IGNORED_KEYS, *UNSUPPORTED_KEYS):
        parser.add_argument(f"--{key}", dest=key, nargs="?", const=True, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


def collect(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(merged config values, the CLI overrides alone, launch options)."""
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    launch_keys = set(option_fields(LaunchArgs))
    values = load_yaml(args.config) if args.config else {}
    launch = {k: values.pop(k) for k in list(values) if k in launch_keys}
    launch.update({k: overrides.pop(k) for k in list(overrides) if k in launch_keys})  # flags win over the YAML
    values.update(overrides)
    return values, overrides, launch


def should_launch(launch: LaunchArgs) -> bool:
    """Relaunch under accelerate unless this process is already one that --launch started (those read the same
    YAML, whose ``launch: true`` would otherwise make every rank launch again)."""
    from workbench.train.run import LAUNCHED_ENV

    return launch.launch and os.environ.get(LAUNCHED_ENV) != "1"


def run_train(args: argparse.Namespace) -> int:
    from workbench.cli import quiet_libraries

    quiet_libraries()
    import warnings

    # Deprecation notices from transformers/peft internals are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets
    import transformers

    # Progress lines come from our callback; library bars and load reports would bury them in log.txt.
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dry_run = bool(vars(args).pop("dry_run", False))
    values, overrides, launch_values = collect(args)
    cfg: TrainConfig = parse_train_config(values)
    launch = LaunchArgs(**launch_values)
    if should_launch(launch):
        return _launch(cfg, launch, args.config, overrides, dry_run=dry_run)
    if dry_run:
        raise WorkbenchError("--dry_run prints the command of a --launch run; add --launch (and --num_processes)")
    from workbench.train.run import run_training

    summary = run_training(cfg)
    from workbench.train.run import is_main_process

    if is_main_process():
        metrics = summary["metrics"]
        loss = metrics.get("train_loss")
        print(f"Done: {summary['output_dir']} (train_loss {loss:.4f}, {metrics.get('train_runtime', 0):.1f}s)"
              if loss is not None else f"Done: {summary['output_dir']}", flush=True)
    return 0


def _launch(cfg: TrainConfig, launch: LaunchArgs, config_path: str | None, overrides: dict[str, Any], *,
            dry_run: bool = False) -> int:
    """Check and prepare here, once; the launched processes skip the output_dir preparation.

    The command is printed first, then everything the ranks would die on is checked (DeepSpeed's package and
    CUDA, the datasets' stage), and only then is the output folder checked and made: a refused launch leaves
    nothing behind."""
    from pathlib import Path

    from workbench.config.train import check_deepspeed_installed
    from workbench.train import outputs as out
    from workbench.train.distributed import launched_train_argv, run_launch
    from workbench.train.run import LAUNCHED_ENV, check_datasets_fit_stage

    tr = cfg.train
    output_dir = (Path(tr.output_dir).expanduser().resolve() if tr.output_dir
                  else out.default_output_dir(cfg.finetuning.stage, cfg.finetuning.finetuning_type))
    argv = launched_train_argv(cfg, launch, config_path, overrides, output_dir)
    print("Launching: " + shlex.join(argv) if not dry_run else shlex.join(argv), flush=True)
    if tr.deepspeed:
        check_deepspeed_installed()
        from workbench.models.loader import pick_device

        if not pick_device(cfg.model.device).startswith("cuda"):
            raise OptionError("deepspeed", "DeepSpeed needs CUDA GPUs and none is visible here; leave deepspeed "
                                           "empty on a CPU (plain --launch runs several gloo processes)")
    resume = out.resolve_resume(tr.resume_from_checkpoint, output_dir)
    check_datasets_fit_stage(cfg.data, cfg.finetuning.stage)
    if dry_run:
        return 0
    out.prepare_output_dir(output_dir, overwrite=tr.overwrite_output_dir, resuming=resume is not None)
    return run_launch(argv, {LAUNCHED_ENV: "1"}, announce=False)
