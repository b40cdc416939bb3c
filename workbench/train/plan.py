"""Planning a training run — what the Train tab's Preview and Start do before anything runs: validate a flat
option mapping, choose the run directory, write nothing, and return config.yaml's contents and the exact argv."""

from __future__ import annotations

import shlex
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from workbench.config.base import OptionError, WorkbenchError, dump_yaml, option_fields, option_flags
from workbench.config.data import DataArgs
from workbench.config.model import ModelArgs
from workbench.config.train import FinetuningArgs, LaunchArgs, TrainArgs, parse_train_config
from workbench.data.inspect import tokenizer_for
from workbench.data.templates import resolve_template
from workbench.models import resources
from workbench.models.loader import pick_device, resolve_model_path
from workbench.paths import run_path, runs_dir
from workbench.rundir import CONFIG_FILE, default_run_name
from workbench.train.outputs import resolve_resume
from workbench.train.run import check_datasets_fit_stage

__all__ = ["TrainPlan", "plan_training", "check_train_memory", "compact_config", "option_defaults",
           "default_run_name", "template_warnings", "train_option_classes", "ESSENTIAL_KEYS"]


def _root(root: Path | str | None) -> Path:
    return Path(root).expanduser() if root is not None else runs_dir()


# Keys a config.yaml always states, even at their defaults, so the file reads as a recipe.
ESSENTIAL_KEYS = ("model_name_or_path", "template", "stage", "finetuning_type", "dataset", "output_dir")


def train_option_classes() -> tuple[type, ...]:
    return (ModelArgs, FinetuningArgs, DataArgs, TrainArgs, LaunchArgs)


def option_defaults() -> dict[str, Any]:
    """Every training option's default (the first class that declares a name wins: seed, ...)."""
    out: dict[str, Any] = {}
    for cls in train_option_classes():
        for name, f in option_fields(cls).items():
            if name not in out:
                out[name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out


def compact_config(values: dict[str, Any]) -> dict[str, Any]:
    """Drop options left at their defaults (except the essentials), keeping the given order."""
    defaults = option_defaults()
    return {k: v for k, v in values.items()
            if k in ESSENTIAL_KEYS or k not in defaults or v != defaults[k]}


@dataclass
class TrainPlan:
    """What Start will run: the run directory, config.yaml's contents and the exact argv."""
    name: str
    path: Path
    config: dict[str, Any]
    argv: list[str]
    reuse: bool
    warnings: list[str]
    train_config: Any  # workbench.config.train.TrainConfig
    launch: Any        # workbench.config.train.LaunchArgs

    @property
    def yaml(self) -> str:
        return dump_yaml(self.config)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def plan_training(values: dict[str, Any], name: str, root: Path | str | None = None) -> TrainPlan:
    """Validate a flat option mapping (YAML keys) for run ``name``; nothing is started or written.

    Raises OptionError naming the option, or WorkbenchError for the run name / run directory.
    """
    path = run_path((name or "").strip(), _root(root))
    values = {k: v for k, v in values.items() if k != "output_dir"}
    launch_keys = set(option_fields(LaunchArgs))
    launch_values = {k: values.pop(k) for k in list(values) if k in launch_keys}
    values["output_dir"] = str(path)
    cfg = parse_train_config(values)
    launch = LaunchArgs(**launch_values)
    check_datasets_fit_stage(cfg.data, cfg.finetuning.stage)
    resume = cfg.train.resume_from_checkpoint
    existing = path.exists() and any(path.iterdir())
    if existing and not resume:
        raise WorkbenchError(f"run {path.name!r} already exists in {path.parent}: choose another run name, or set "
                             "resume_from_checkpoint to continue it")
    if resume:
        if not existing:
            raise OptionError("resume_from_checkpoint", f"run {path.name!r} does not exist yet; give the name of the "
                                                        "run to continue as the run name")
        resolve_resume(resume, path)
    argv = [sys.executable, "-m", "workbench", "train", str(path / CONFIG_FILE)]
    launch_flags = {k: v for k, v in launch.to_dict(non_default_only=True).items() if k != "launch"}
    if launch.launch or launch.num_processes > 1 or launch.num_machines > 1:
        argv += ["--launch", *option_flags(launch_flags)]
    return TrainPlan(name=path.name, path=path, config=compact_config(values), argv=argv, reuse=bool(resume),
                     warnings=list(cfg.warnings) + template_warnings(cfg), train_config=cfg, launch=launch)


def template_warnings(cfg) -> list[str]:
    """Refuse a template whose stop tokens the model's tokenizer cannot encode, before a job starts; warn about a
    format the model was not trained on. Skipped (training checks again) when the tokenizer is not here yet."""
    if cfg.finetuning.stage == "pt":
        return []
    try:
        tokenizer = tokenizer_for(cfg.model.model_name_or_path)
    except Exception:
        return []
    template = resolve_template(cfg.data.template, cfg.model.model_name_or_path)
    template.check_tokenizer(tokenizer)
    return [f"template {template.name}: {w}" for w in template.tokenizer_warnings(tokenizer)]


def check_train_memory(plan: TrainPlan, loaded_chat_model: Any = None) -> None:
    """Refuse a run that will not fit in memory next to what is loaded (see workbench.models.resources)."""
    cfg = plan.train_config
    model_path = Path(resolve_model_path(cfg.model.model_name_or_path))
    shape = resources.model_shape(model_path) if model_path.is_dir() else None
    if shape is None:
        return  # a hub model not downloaded yet: its size is unknown here
    device = pick_device(cfg.model.device)
    half = cfg.model.infer_dtype in ("bfloat16", "float16") or (device.startswith("cuda") and
                                                                cfg.model.infer_dtype == "auto")
    needed = resources.estimate_train_memory(
        shape, finetuning_type=cfg.finetuning.finetuning_type, quantization_bit=cfg.model.quantization_bit,
        weight_bytes=2 if half else 4, batch_size=cfg.train.per_device_train_batch_size,
        cutoff_len=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    if device == "cpu":
        needed *= plan.launch.num_processes  # data-parallel ranks share the machine's RAM
    chat_bytes = resources.loaded_model_bytes(loaded_chat_model.model) if loaded_chat_model is not None else 0
    resources.check_train_fits(needed, device, chat_model_bytes=chat_bytes,
                               chat_model=getattr(loaded_chat_model, "label", "") if loaded_chat_model else "")


