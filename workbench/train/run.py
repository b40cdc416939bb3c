"""One training run, start to finish: check → data → model → method → trainer → outputs.

Everything that can be checked without the weights is checked first (options, output_dir,
checkpoint, dataset/stage fit, LoRA targets and layer counts on a weightless model skeleton,
precision support, tokenisation), so a mistake costs seconds, not a model load.

Each stage family is one recipe in :data:`STAGE_RECIPES` (pt/sft, rm, dpo): it loads the model, applies the
method and builds the stage's trainer; the steps before and after are shared.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.config.base import OptionError, WorkbenchError
from workbench.config.train import TrainConfig, check_deepspeed_installed, resolve_deepspeed_config
from workbench.machine import cpu_has_native_bf16
from workbench.rundir import CONFIG_FILE, PROGRESS_FILE, RUN_RECORD, write_phase
from workbench.train import outputs as out

LAUNCHED_ENV = "WORKBENCH_LAUNCHED"  # set by --launch: the parent already prepared output_dir


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_precision(tr, device: str, log: Callable[[str], None]) -> None:
    import torch

    if device.startswith("cuda"):
        if tr.bf16 and not torch.cuda.is_bf16_supported():
            raise OptionError("bf16", "this GPU does not support bfloat16; use fp16")
        return
    if tr.fp16:
        raise OptionError("fp16", f"float16 mixed precision needs a CUDA GPU (device here: {device}); "
                                  "use bf16 on CPUs that support it, or neither")
    if tr.bf16 and device == "cpu" and not cpu_has_native_bf16():
        log("warning: bf16: this CPU has no native bfloat16 instructions; autocast will be emulated and slow")


def check_datasets_fit_stage(data, stage: str) -> None:
    """A ranking dataset for sft (or the reverse) is refused from dataset_info.json alone."""
    from workbench.data.registry import get_spec

    for name in data.dataset_names() + data.eval_dataset_names():
        spec = get_spec(name, data.dataset_path())
        if stage in ("rm", "dpo") and not spec.ranking:
            raise OptionError("dataset", f"{name!r} is not a ranking (preference) dataset, which stage {stage} "
                                         "needs (dataset_info.json: \"ranking\": true)")
        if stage in ("pt", "sft") and spec.ranking:
            raise OptionError("dataset", f"{name!r} is a ranking (preference) dataset: train it with stage rm or "
                                         f"dpo, not {stage}")


def set_cpu_threads(requested: int | None) -> str:
    """Give each process its share of the cores it may run on (several ranks with every core each slowed a loaded
    2-core machine ~10×); returns the choice as a log line."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = requested or max(1, cores // local)
    torch.set_num_threads(threads)
    why = "torch_threads" if requested else f"{cores} cores ÷ {local} process{'es' if local > 1 else ''} here"
    return f"{threads} per process ({why}; torch_threads sets it)"


def training_arguments(cfg: TrainConfig, output_dir: Path, device: str, has_eval: bool) -> dict[str, Any]:
    """TrainArgs → keyword arguments of transformers' TrainingArguments (and TRL's configs)."""
    tr = cfg.train
    eval_strategy = tr.eval_strategy or ("steps" if has_eval else "no")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=tr.per_device_train_batch_size,
        per_device_eval_batch_size=tr.per_device_eval_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        num_train_epochs=tr.num_train_epochs,
        max_steps=tr.max_steps,
        lr_scheduler_type=tr.lr_scheduler_type,
        # transformers 5 reads a value below 1 as a fraction of all steps (LLaMA-Factory's warmup_ratio).
        warmup_steps=tr.warmup_steps or tr.warmup_ratio,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        optim=tr.optim,
        bf16=tr.bf16,
        fp16=tr.fp16,
        # transformers 5's name for gradient_checkpointing (which TRL's configs default to true).
        activation_checkpointing=tr.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tr.gradient_checkpointing else None,
        logging_steps=tr.logging_steps,
        save_strategy=tr.save_strategy,
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=(tr.eval_steps or tr.save_steps) if eval_strategy == "steps" else None,
        prediction_loss_only=True,
        load_best_model_at_end=tr.load_best_model_at_end,
        # early stopping compares evaluations by a metric; the eval loss unless metric_for_best_model says otherwise
        metric_for_best_model="loss" if tr.early_stopping_patience else None,
        seed=tr.seed,
        data_seed=tr.seed,
        full_determinism=tr.full_determinism,
        report_to=tr.report_backends() or "none",
        run_name=tr.run_name or output_dir.name,
        train_sampling_strategy="group_by_length" if tr.group_by_length else "random",
        use_cpu=device == "cpu",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=tr.disable_tqdm,
        torch_compile=tr.torch_compile,
        # LoRA, freeze and full runs give every trained parameter a gradient; HF's automatic True made DDP walk
        # the graph each step and warn about it in every multi-process log (LLaMA-Factory also sets False).
        ddp_find_unused_parameters=bool(tr.ddp_find_unused_parameters),
        deepspeed=str(resolve_deepspeed_config(tr.deepspeed)) if tr.deepspeed else None,
        save_only_model=tr.save_only_model,
        dataloader_num_workers=tr.dataloader_num_workers,
        ddp_timeout=tr.ddp_timeout,
    )
    if tr.enable_liger_kernel:  # checked in parse_train_config: a CUDA GPU and the liger-kernel package
        # Liger's RMSNorm, RoPE and SwiGLU kernels; its fused linear cross-entropy would replace the model's forward,
        # and Workbench's trainers compute the loss themselves (only where there is a label).
        kwargs.update(use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": False})
    # Every other TrainingArguments option the user set (adam_beta2, lr_scheduler_kwargs, ...), unchanged; they may
    # replace a value chosen above (data_seed, train_sampling_strategy, activation_checkpointing_kwargs).
    kwargs.update(tr.passthrough())
    if cfg.data.streaming:
        accel = kwargs.get("accelerator_config") or {}
        if isinstance(accel, str):  # a JSON file's path
            accel = json.loads(Path(accel).expanduser().read_text(encoding="utf-8"))
        kwargs["accelerator_config"] = {**accel, "dispatch_batches": False}
    return kwargs


def attn_name(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(getattr(base, "config", None), "_attn_implementation", "default"))


def keep_trainable_in_compute_dtype(model) -> None:
    """TRL turns every trainable weight of a quantized model into bf16 (the QLoRA paper's advice). When the model
    computes in float32 (no bf16 autocast, e.g. on a CPU), a plain trained module such as the reward head then gets
    float32 inputs and fails on the dtype mismatch: keep the trained weights in the compute dtype instead."""
    import torch

    compute = model.get_input_embeddings().weight.dtype
    if compute != torch.float32:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.to(compute)


def load_reward_model(margs, model_path: str):
    """Like loader.load_model, but with a one-output sequence-classification head (TRL's reward model)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from workbench.models.loader import pick_device, pick_dtype, quantization_config

    device = pick_device(margs.device)
    dtype = pick_dtype(margs.infer_dtype, device)
    quant = quantization_config(margs, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "num_labels": 1, "trust_remote_code": margs.trust_remote_code}
    if margs.attn_implementation != "auto":
        kwargs["attn_implementation"] = margs.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_path, **kwargs)
    except (ImportError, RuntimeError, ValueError) as exc:
        raise WorkbenchError(f"cannot load {margs.model_name_or_path} as a reward model: {exc}") from None
    if quant is None:
        model.to(device)
    model.train()
    return model


@dataclass
class _Run:
    """What every stage's recipe shares: the checked options and paths, the device, the tokenised data."""

    cfg: TrainConfig
    log: Callable[[str], None]
    main: bool
    output_dir: Path
    resume: Path | None
    device: str
    model_path: str
    plan: dict
    tokenizer: Any = None
    args_kwargs: dict[str, Any] = field(default_factory=dict)
    train_set: Any = None
    eval_set: Any = None
    template: str = ""
    varlen: bool = False  # pt/sft on a CPU: attention per example instead of a block-diagonal mask
    progress: Any = None  # the ProgressCallback, made just before the trainer


def run_training(cfg: TrainConfig, *, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Train as configured; returns a summary (output_dir, metrics). Raises WorkbenchError on bad input."""
    started = time.perf_counter()
    if is_main_process():
        for warning in cfg.warnings:
            log(f"warning: {warning}")
    run = _check_before_loading(cfg, log)
    _phase(run, "tokenising", f"reading and tokenising {cfg.data.dataset}")
    _load_data(run)
    from transformers import set_seed

    set_seed(cfg.train.seed)  # the LoRA / score-head initialisation is part of the reproducible run
    rows = len(run.train_set) if hasattr(run.train_set, "__len__") else None
    _phase(run, "loading", f"loading {cfg.model.model_name_or_path} and building the trainer"
           + (f" ({rows} training examples ready)" if rows is not None else ""), train_examples=rows)
    trainer = STAGE_RECIPES[cfg.finetuning.stage](run)
    _finish_trainer(run, trainer)
    return _train_and_save(run, trainer, started)


# ---- 1. checks that need neither weights nor data ------------------------------------------------

def _check_before_loading(cfg: TrainConfig, log: Callable[[str], None]) -> _Run:
    """Output directory, checkpoint, dataset/stage fit, device, precision and the LoRA plan on a weightless model."""
    ft, tr, margs = cfg.finetuning, cfg.train, cfg.model
    main = is_main_process()
    output_dir = (Path(tr.output_dir).expanduser().resolve() if tr.output_dir
                  else out.default_output_dir(ft.stage, ft.finetuning_type))
    tr.output_dir = str(output_dir)
    resume = out.resolve_resume(tr.resume_from_checkpoint, output_dir)
    if main and os.environ.get(LAUNCHED_ENV) != "1":
        out.prepare_output_dir(output_dir, overwrite=tr.overwrite_output_dir, resuming=resume is not None)
    check_datasets_fit_stage(cfg.data, ft.stage)
    from workbench.models.loader import pick_device, resolve_model_path

    device = pick_device(margs.device)
    threads = set_cpu_threads(tr.torch_threads)
    if main:
        log(f"Threads: {threads}")
    check_precision(tr, device, log)
    if tr.deepspeed:
        check_deepspeed_installed()
        if not device.startswith("cuda"):
            raise OptionError("deepspeed", "DeepSpeed needs CUDA GPUs; leave deepspeed empty on a CPU")
    model_path = resolve_model_path(margs.model_name_or_path)
    from workbench.train.methods import preflight

    plan = preflight(model_path, ft, trust_remote_code=margs.trust_remote_code)
    return _Run(cfg, log, main, output_dir, resume, device, model_path, plan)


def _phase(run: _Run, phase: str, text: str, **extra: Any) -> None:
    """phase.json: what the UI shows of a run before its first progress line (the trainer's callback goes on)."""
    if run.main:
        write_phase(run.output_dir, phase, text, **extra)


# ---- 2. data (the tokenizer only) ------------------------------------------------------------------

def _load_data(run: _Run) -> None:
    """The tokenizer, the TrainingArguments' keywords and the tokenised train/eval sets."""
    from transformers import TrainingArguments

    from workbench.data.loader import build_dataset
    from workbench.models.loader import load_tokenizer

    cfg, data, margs = run.cfg, run.cfg.data, run.cfg.model
    run.tokenizer = load_tokenizer(run.model_path, padding_side="right", trust_remote_code=margs.trust_remote_code)
    has_eval = bool(data.val_size) or bool(data.eval_dataset_names())
    run.args_kwargs = training_arguments(cfg, run.output_dir, run.device, has_eval)
    try:
        probe_args = TrainingArguments(**{**run.args_kwargs, "report_to": "none"})  # sets up the process group
    except (ValueError, OSError) as exc:  # e.g. load_best_model_at_end with mismatched strategies
        raise WorkbenchError(f"transformers' TrainingArguments refused these options: {exc}") from None
    with probe_args.main_process_first(desc="tokenising the dataset"):
        built = build_dataset(data, run.tokenizer, cfg.finetuning.stage, model_name_or_path=margs.model_name_or_path,
                              log=run.log)
    run.train_set, run.eval_set = built["train"], built.get("eval")
    run.template = built.get("stats", {}).get("template", data.template)
    if run.main:
        rows = len(run.train_set) if hasattr(run.train_set, "__len__") else "streaming"
        run.log(f"Data: {rows} training rows, {len(run.eval_set) if run.eval_set is not None else 0} eval rows "
                f"(template {run.template})")


# ---- 3. the stages: model, method and trainer ----------------------------------------------------

def _prepare_model(run: _Run, model) -> tuple[Any, Any]:
    """The fine-tuning method applied (freeze, full, or the LoRA config to attach); returns (model, peft_config)."""
    import torch

    from workbench.train.methods import prepare_model

    tr = run.cfg.train
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    model, peft_config = prepare_model(model, run.cfg.finetuning, run.plan,
                                       quantized=bool(run.cfg.model.quantization_bit),
                                       gradient_checkpointing=tr.gradient_checkpointing,
                                       upcast_trainable=half and (tr.bf16 or tr.fp16))
    if tr.gradient_checkpointing:
        model.config.use_cache = False
    return model, peft_config


def _progress_callback(run: _Run):
    """progress.jsonl started afresh, or cut back to the checkpoint a resumed run continues from."""
    from workbench.train.callbacks import ProgressCallback, truncate_progress

    progress_path = run.output_dir / PROGRESS_FILE
    if run.main:
        if run.resume is not None:
            resumed_step = json.loads((run.resume / "trainer_state.json").read_text()).get("global_step", 0)
            truncate_progress(progress_path, resumed_step)
        else:
            progress_path.write_text("", encoding="utf-8")
    run.progress = ProgressCallback(progress_path)
    return run.progress


def _attach_lora(run: _Run, model, peft_config):
    """pt/sft: a new LoRA adapter, or the given one trained further."""
    from peft import PeftModel, get_peft_model

    margs = run.cfg.model
    if margs.adapter_name_or_path:
        from workbench.models.adapters import check_adapter_fits, read_adapter_config

        adapter_dir = next(iter(margs.adapter_map().values()))
        read_adapter_config(adapter_dir)
        check_adapter_fits(model, adapter_dir, margs.model_name_or_path)
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    else:
        model = get_peft_model(model, peft_config)
    if run.cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _causal_lm_trainer(run: _Run):
    """pt and sft: next-token loss on the labelled tokens (Workbench's own trainer and collator)."""
    from transformers import TrainingArguments

    from workbench.models.loader import load_model
    from workbench.train.collator import CausalLMCollator
    from workbench.train.trainer import CausalLMTrainer

    margs, tr = run.cfg.model, run.cfg.train
    loaded = load_model(margs, adapters={}, padding_side="right", for_training=True)
    model, run.tokenizer = loaded.model, loaded.tokenizer
    if run.device == "cpu" and margs.attn_implementation == "auto":
        from workbench.train.attention import use_varlen_attention

        run.varlen = use_varlen_attention(model)
    model, peft_config = _prepare_model(run, model)
    if peft_config is not None:
        model = _attach_lora(run, model, peft_config)
    progress = _progress_callback(run)
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", None))
    collator = CausalLMCollator(
        pad_token_id=run.tokenizer.pad_token_id, padding_free=tr.padding_free,
        # Kernels that read position_ids need no dense mask, so a flattened row may be any length.
        max_flat_tokens=1 << 30 if run.varlen or "flash" in attn else 8192,
    )
    args = TrainingArguments(**run.args_kwargs, remove_unused_columns=False, label_names=["labels"])
    return CausalLMTrainer(model=model, args=args, train_dataset=run.train_set, eval_dataset=run.eval_set,
                           data_collator=collator, processing_class=run.tokenizer, callbacks=[progress])


def _reward_trainer(run: _Run):
    """rm: a one-output score head trained on chosen/rejected pairs (TRL's RewardTrainer)."""
    from trl import RewardConfig, RewardTrainer

    model, peft_config = _prepare_model(run, load_reward_model(run.cfg.model, run.model_path))
    progress = _progress_callback(run)
    args = RewardConfig(**run.args_kwargs, max_length=run.cfg.data.cutoff_len, disable_dropout=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=run.train_set, eval_dataset=run.eval_set,
                            processing_class=run.tokenizer, peft_config=peft_config, callbacks=[progress])
    if run.cfg.model.quantization_bit:
        keep_trainable_in_compute_dtype(trainer.model)
    return trainer


def _dpo_trainer(run: _Run):
    """dpo: the preference loss (plus LLaMA-Factory's pref_ftx SFT term) with TRL's DPOTrainer."""
    from trl import DPOConfig, DPOTrainer

    from workbench.models.loader import load_model

    ft = run.cfg.finetuning
    loaded = load_model(run.cfg.model, adapters={}, padding_side="right", for_training=True)
    run.tokenizer = loaded.tokenizer
    model, peft_config = _prepare_model(run, loaded.model)
    progress = _progress_callback(run)
    losses, weights = [ft.pref_loss], [1.0]
    if ft.pref_ftx > 0:  # LLaMA-Factory's pref_ftx: an SFT term on the chosen answers
        losses.append("sft")
        weights.append(ft.pref_ftx)
    args = DPOConfig(**run.args_kwargs, max_length=run.cfg.data.cutoff_len, beta=ft.pref_beta, loss_type=losses,
                     loss_weights=weights if len(losses) > 1 else None, label_smoothing=ft.dpo_label_smoothing)
    trainer = DPOTrainer(model=model, args=args, train_dataset=run.train_set, eval_dataset=run.eval_set,
                         processing_class=run.tokenizer, peft_config=peft_config, callbacks=[progress])
    if run.cfg.model.quantization_bit:
        keep_trainable_in_compute_dtype(trainer.model)
    return trainer


STAGE_RECIPES: dict[str, Callable[[_Run], Any]] = {
    "pt": _causal_lm_trainer, "sft": _causal_lm_trainer, "rm": _reward_trainer, "dpo": _dpo_trainer,
}


# ---- 4. what every trainer gets -------------------------------------------------------------------

def _finish_trainer(run: _Run, trainer) -> None:
    """What every stage's trainer gets: no console printer (our callback prints), the frozen base in the autocast
    dtype, and the summary lines of the log."""
    import torch
    from transformers import PrinterCallback

    ft, tr, margs = run.cfg.finetuning, run.cfg.train, run.cfg.model
    quantized = bool(margs.quantization_bit)
    trainer.remove_callback(PrinterCallback)
    if tr.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=tr.early_stopping_patience))
    if ft.finetuning_type == "lora" and not quantized and not tr.deepspeed and (tr.bf16 or tr.fp16):
        from workbench.train.methods import cast_frozen_linears

        # Only the adapter is saved, so the base's storage dtype is ours to choose: the autocast dtype.
        cast_frozen_linears(trainer.model, torch.bfloat16 if tr.bf16 else torch.float16)
    if not run.main:
        return
    from workbench.train.methods import count_parameters

    trainable, total = count_parameters(trainer.model)
    world = trainer.args.world_size
    procs = f"; {world} processes ({trainer.accelerator.state.backend})" if world > 1 else ""
    run.log(f"Model: {margs.model_name_or_path} on {run.device} ({ft.stage}, {ft.finetuning_type}"
            f"{f', {margs.quantization_bit}-bit' if quantized else ''}); trainable parameters {trainable:,} of "
            f"{total:,} ({100 * trainable / max(total, 1):.3f}%){procs}")
    precision = "bf16 autocast" if tr.bf16 else "fp16 autocast" if tr.fp16 else str(next(
        trainer.model.parameters()).dtype).replace("torch.", "")
    run.log(f"Precision: {precision}; attention: "
            f"{'varlen (per example)' if run.varlen else attn_name(trainer.model)}; "
            f"batches: {'padding-free' if tr.padding_free and ft.stage in ('pt', 'sft') else 'padded'}"
            f"{'; loss: output layer + cross-entropy in chunks' if getattr(trainer, 'chunked_loss', False) else ''}")
    if run.resume is not None:
        run.log(f"Resuming from {run.resume}")


# ---- 5. train and save ---------------------------------------------------------------------------

def _train_and_save(run: _Run, trainer, started: float) -> dict[str, Any]:
    """Train (or resume), refuse a diverged result, save the model, metrics, state and the run's own files."""
    resume = run.resume
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    run.progress.raise_if_diverged(trainer)  # NaN/inf loss or weights: the run fails here, nothing is saved as done
    _phase(run, "saving", "saving the trained weights and the run's files")
    metrics = dict(result.metrics)
    metrics["num_input_tokens_seen"] = trainer.state.num_input_tokens_seen
    trainer.save_model(str(run.output_dir))
    trainer.save_metrics("train", metrics)
    if run.eval_set is not None:
        evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
        if not evaluated or evaluated[-1].get("step") != trainer.state.global_step:
            trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_state()
    if trainer.is_world_process_zero():
        _write_run_files(run.cfg, run.output_dir, run.template, run.plan, run.tokenizer, metrics,
                         time.perf_counter() - started)
    return {"output_dir": str(run.output_dir), "metrics": metrics, "template": run.template}


def _write_run_files(cfg: TrainConfig, output_dir: Path, template: str, plan: dict, tokenizer,
                     metrics: dict, seconds: float) -> None:
    ft = cfg.finetuning
    tokenizer.save_pretrained(str(output_dir))  # chat template included (chat_template.jinja)
    resolved = cfg.to_dict()
    resolved["template"] = template
    resolved["output_dir"] = str(output_dir)
    out.write_config(output_dir / CONFIG_FILE, resolved)
    out.write_json(output_dir / RUN_RECORD, {
        "stage": ft.stage,
        "finetuning_type": ft.finetuning_type,
        "base_model": cfg.model.model_name_or_path,
        "template": template,
        "dataset": cfg.data.dataset,
        "quantization_bit": cfg.model.quantization_bit,
        "lora_target": plan.get("lora_target"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        "train_loss": metrics.get("train_loss"),
    })
    if ft.plot_loss:
        from workbench.train.plot import plot_loss

        plot_loss(output_dir / PROGRESS_FILE, output_dir / "loss.png",
                  title=f"{cfg.model.model_name_or_path} · {ft.stage} · {ft.finetuning_type}")
