"""Planning a training run — what the Train tab's Preview and Start do before anything runs: validate a flat
option mapping, choose the run directory, write nothing, and return config.yaml's contents and the exact argv;
and estimate the run (examples, steps, tokens per step, time, slow choices on this device) before it starts."""

from __future__ import annotations

import functools
import math
import shlex
import statistics
import sys
import time
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.base import OptionError, WorkbenchError, dump_yaml, option_fields, option_flags
from workbench.config.data import DataArgs
from workbench.config.model import ModelArgs
from workbench.config.train import FinetuningArgs, LaunchArgs, TrainArgs, parse_train_config
from workbench.data.inspect import tokenizer_for
from workbench.data.loader import load_spec, split_for_eval
from workbench.data.registry import get_spec
from workbench.data.stats import token_lengths
from workbench.data.templates import resolve_template
from workbench.machine import cpu_has_native_bf16
from workbench.models import resources
from workbench.models.loader import pick_device, resolve_model_path
from workbench.paths import run_path, runs_dir
from workbench.rundir import CONFIG_FILE, default_run_name
from workbench.train.outputs import resolve_resume
from workbench.train.run import check_datasets_fit_stage

__all__ = ["TrainPlan", "plan_training", "check_train_memory", "compact_config", "option_defaults",
           "default_run_name", "template_warnings", "train_option_classes", "ESSENTIAL_KEYS", "RunEstimate",
           "estimate_run", "slow_choices", "device_speed"]


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


# ---- estimates before Start ----------------------------------------------------------------------------------

ESTIMATE_SAMPLE = 256           # examples tokenised to measure the mean length (the run tokenises all of them)
SLOW_FULL_PARAMS = 1_000_000_000  # full fine-tuning past this many parameters on a CPU is flagged
SLOW_ANY_PARAMS = 4_000_000_000   # any training past this many parameters on a CPU is flagged
LONG_CPU_SECONDS = 2 * 3600       # an estimate past this on a CPU suggests a shorter first run
# The share of the probe's matmul speed a training step reaches (attention, norms, the optimiser and autograd's
# bookkeeping are not matmuls). Measured on a shared 2-core CPU with SmolLM2-135M LoRA it came out between about 0.25
# and 1 depending on the load next to it: a rough figure, which is why that estimate is called rough.
STEP_EFFICIENCY = 0.5


@dataclass
class RunEstimate:
    """What a planned run will do, before it starts. Counts come from the data as the run will read it; the time
    is an estimate: from the measured pace of an earlier comparable run, else from a short matmul probe."""
    train_examples: int | None = None
    eval_examples: int | None = None
    steps: int | None = None
    steps_per_epoch: int | None = None
    examples_per_step: int | None = None
    tokens_per_example: float | None = None  # mean, cut at cutoff_len (input tokens: what tokens/s counts)
    tokens_per_step: float | None = None
    seconds: float | None = None
    basis: str = ""                           # where the time comes from
    notes: list[str] = field(default_factory=list)     # why a number is missing
    warnings: list[str] = field(default_factory=list)  # slow choices on this device


def estimate_run(plan: TrainPlan, pace: Any = None, *, sample: int = ESTIMATE_SAMPLE) -> RunEstimate:
    """Estimate ``plan`` without starting it. ``pace``: the measured pace of a comparable earlier run (an object
    with ``run``, ``seconds_per_step`` and ``tokens_per_second``, see ``workbench.jobs.runs.comparable_pace``), or
    None to time a short probe on this device. Data that cannot be read without a download is not counted."""
    cfg, launch = plan.train_config, plan.launch
    est = RunEstimate()
    device = pick_device(cfg.model.device)
    model_path = Path(resolve_model_path(cfg.model.model_name_or_path))
    shape = resources.model_shape(model_path) if model_path.is_dir() else None
    est.warnings = slow_choices(cfg, device, shape)
    _estimate_data(cfg, launch, est, sample)
    if est.steps is None:
        return est
    if pace is not None:
        if pace.tokens_per_second and est.tokens_per_step:
            est.seconds = est.steps * est.tokens_per_step / pace.tokens_per_second
            est.basis = (f"estimate from run {pace.run}, which trained {pace.tokens_per_second:,.0f} tokens/s with "
                         "the same model, method and precision")
        else:
            est.seconds = est.steps * pace.seconds_per_step
            est.basis = (f"estimate from run {pace.run}, which took {pace.seconds_per_step:.1f} s a step with the "
                         "same model, method and precision")
    elif shape is not None and est.tokens_per_step:
        flops_per_second, probe = device_speed(device, shape.hidden, int(min(est.tokens_per_step, 4096)))
        per_token = (6 if cfg.finetuning.finetuning_type == "full" else 4) * shape.params
        est.seconds = est.steps * est.tokens_per_step * per_token / (flops_per_second * STEP_EFFICIENCY)
        est.basis = (f"rough estimate: ~{per_token / 1e9:.2f} GFLOP per token for {shape.params / 1e6:,.0f}M "
                     f"parameters at {flops_per_second / 1e9:,.0f} GFLOP/s, {probe}; no earlier run with this "
                     "model, method and precision to measure against")
    else:
        est.notes.append("no time estimate: the model is not on disk yet (its size is unknown), and there is no "
                         "earlier run of it to measure against")
    if est.seconds is not None and device == "cpu" and est.seconds > LONG_CPU_SECONDS:
        est.warnings.append("a long run for a CPU: set max_samples or max_steps for a first, short try")
    return est


def _estimate_data(cfg, launch, est: RunEstimate, sample: int) -> None:
    """Examples, steps and tokens per step, counted the way the run counts them (max_samples, the eval split,
    packing, several processes)."""
    data, tr, stage = cfg.data, cfg.train, cfg.finetuning.stage
    processes = max(1, launch.num_processes)
    est.examples_per_step = tr.per_device_train_batch_size * tr.gradient_accumulation_steps * processes
    if data.streaming:
        est.notes.append("streaming data is not counted before the run: max_steps sets its length")
        est.steps = tr.max_steps if tr.max_steps > 0 else None
        return
    try:
        records = [r for name in data.dataset_names()
                   for r in load_spec(get_spec(name, data.dataset_path()), data.max_samples, data.seed,
                                      allow_download=False).records]
        if data.eval_dataset_names():
            train = records
            est.eval_examples = sum(len(load_spec(get_spec(n, data.dataset_path()), data.max_samples, data.seed,
                                                  allow_download=False).records) for n in data.eval_dataset_names())
        else:
            train, held_out = split_for_eval(records, data.val_size, data.seed)
            est.eval_examples = len(held_out)
    except WorkbenchError as exc:
        est.notes.append(f"the examples were not counted: {exc}")
        est.steps = tr.max_steps if tr.max_steps > 0 else None
        return
    est.train_examples = len(train)
    mean = None
    try:
        tokenizer = tokenizer_for(cfg.model.model_name_or_path)
        template = resolve_template(data.template, cfg.model.model_name_or_path)
        picked = train[:: max(1, len(train) // sample)][:sample]
        lengths = token_lengths(picked, template, tokenizer, train_on_prompt=data.train_on_prompt,
                                mask_history=data.mask_history, default_system=data.default_system).lengths
        if lengths:
            mean = statistics.fmean(min(n, data.cutoff_len) for n in lengths)
            if stage in ("rm", "dpo"):
                mean *= 2  # the chosen and the rejected answer both go through the model
    except WorkbenchError as exc:
        est.notes.append(f"tokens were not counted: {exc}")
    rows = est.train_examples
    if mean is not None:
        est.tokens_per_example = mean
        if stage == "pt" or (data.packing and stage == "sft"):  # rows of cutoff_len tokens, not examples
            rows = max(1, math.ceil(est.train_examples * mean / data.cutoff_len))
            est.tokens_per_example = min(mean * est.train_examples / rows, data.cutoff_len)
        est.tokens_per_step = est.tokens_per_example * min(est.examples_per_step, rows)
    per_process = math.ceil(rows / processes)
    batches = math.ceil(per_process / tr.per_device_train_batch_size)
    est.steps_per_epoch = max(batches // tr.gradient_accumulation_steps
                              + int(batches % tr.gradient_accumulation_steps > 0), 1)
    est.steps = tr.max_steps if tr.max_steps > 0 else math.ceil(tr.num_train_epochs * est.steps_per_epoch)


def slow_choices(cfg, device: str, shape: resources.ModelShape | None) -> list[str]:
    """Choices that make a run slow on this device, each with what to do instead."""
    ft, tr = cfg.finetuning, cfg.train
    out = []
    if device != "cpu":
        return out
    params = shape.params if shape is not None else 0
    size = f"{params / 1e9:.1f}B-parameter" if params else ""
    if ft.finetuning_type == "lora" and ft.use_dora:
        out.append("use_dora on a CPU: DoRA rebuilds every adapted weight (W + BA) at each step to take its norm, "
                   "which costs time and memory a plain LoRA step does not; try plain LoRA first (use_rslora is "
                   "free)")
    if ft.finetuning_type == "full" and params >= SLOW_FULL_PARAMS:
        out.append(f"full fine-tuning of a {size} model on a CPU: every weight gets a gradient and optimizer state "
                   "(about 16 bytes a parameter) and each step is slow; LoRA trains about 1% of the weights")
    elif params >= SLOW_ANY_PARAMS:
        out.append(f"a {size} model on a CPU: each step takes a long time; a smaller model, or a GPU, suits it")
    if tr.bf16 and not cpu_has_native_bf16():
        out.append("bf16 on this CPU: it has no bfloat16 instructions, so autocast is emulated and slower than "
                   "float32; turn bf16 off")
    if tr.gradient_checkpointing:
        out.append("gradient_checkpointing recomputes activations (about 30% slower): it only saves memory")
    return out


@functools.lru_cache(maxsize=16)
def device_speed(device: str, hidden: int, rows: int) -> tuple[float, str]:
    """FLOP/s of a float32 matmul shaped like a training step's ((rows × hidden) by (hidden × 4·hidden)) on
    ``device``, measured for about 0.3 s, once per process and shape; and a phrase saying so."""
    import torch

    hidden, rows = max(hidden, 64), max(rows, 16)
    a = torch.randn(rows, hidden, device=device)
    b = torch.randn(hidden, 4 * hidden, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    count, started = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if count % 4 == 0:
            sync()
            elapsed = time.perf_counter() - started
            if elapsed > 0.3:
                break
    return 2 * rows * hidden * 4 * hidden * count / elapsed, f"measured on this {device} with a 0.3 s matmul probe"
