"""Training options, with LLaMA-Factory's names so its YAML files and command lines run unchanged.

``FinetuningArgs`` says *what* is trained (stage, method, LoRA/freeze/preference settings);
``TrainArgs`` says *how* (Hugging Face ``TrainingArguments`` names: batch, schedule, precision,
logging, checkpoints); ``LaunchArgs`` says how many processes run it. Together with ``ModelArgs``
and ``DataArgs`` they make one run config: :func:`parse_train_config` merges a YAML file and
``--key value`` overrides into them, naming unknown keys and warning about LLaMA-Factory keys that
Workbench knowingly ignores (:data:`IGNORED_KEYS`).

Every other field of transformers' ``TrainingArguments`` (adam_beta2, lr_scheduler_kwargs, ...) is an
option of ``TrainArgs`` too: derived from that dataclass (type, default, help) rather than listed here,
and passed to it unchanged, except the few in :data:`TRAINING_ARGUMENTS_REFUSED`. Other programs' names
for options (Qwen's finetune.py: ``model_max_length``, ``use_lora``, ``q_lora``, ``lora_r``, ...) are
declared as aliases next to the options they set (``ALIASES`` of each class).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workbench.config.base import (UNSET, Alias, OptionError, Options, WorkbenchError, aliases_of, mirror_fields,
                                   option, option_fields, parse_bool, split_mapping)
from workbench.config.data import STAGES, DataArgs
from workbench.config.model import ModelArgs
from workbench.paths import project_presets_dir

FINETUNING_TYPES = ("lora", "freeze", "full")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)
# TRL 1.16 DPOTrainer loss types (trl/trainer/dpo_config.py); LLaMA-Factory's orpo/simpo/kto_pair are not DPO
# losses in TRL, so they are rejected with a pointer instead of being silently replaced.
PREF_LOSSES = (
    "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "exo_pair", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit")
DEEPSPEED_PRESETS = {
    "z2": "ds_z2_config.json", "z2_offload": "ds_z2_offload_config.json",
    "z3": "ds_z3_config.json", "z3_offload": "ds_z3_offload_config.json",
}
# The optional GPU packages are installed by one command each (Makefile, requirements-<extra>.txt), which keeps the
# installed torch; these are the commands the options that need them name.
DEEPSPEED_INSTALL = "make extras EXTRAS=deepspeed"
LIGER_INSTALL = "make extras EXTRAS=liger"

# LLaMA-Factory keys that Workbench accepts in YAML/CLI but does not act on: a warning, not an error.
IGNORED_KEYS: dict[str, str] = {
    "quantization_method": "only bitsandbytes quantization is supported (quantization_bit)",
    "flash_attn": "use attn_implementation (auto, eager, sdpa, flash_attention_2)",
    "use_unsloth": "Unsloth is not used",
    "use_unsloth_gc": "Unsloth is not used",
    "upcast_layernorm": "layer norms keep the model's dtype",
    "upcast_lmhead_output": "the loss is always computed in float32",
    "neat_packing": "packing never lets attention cross examples (position ids restart per example)",
    "tokenized_path": "tokenised datasets are cached automatically",
    "mix_strategy": "datasets are concatenated",
    "interleave_probs": "datasets are concatenated",
    "print_param_status": "the trainable parameter count is always printed",
    "disable_gradient_checkpointing": "use gradient_checkpointing (off by default)",
    "use_fast_tokenizer": "the fast tokenizer is always used",
    "low_cpu_mem_usage": "weights are always loaded lazily",
    "include_num_input_tokens_seen": "tokens are always counted (tokens_per_second in progress.jsonl)",
    "include_tokens_per_second": "tokens are always counted (tokens_per_second in progress.jsonl)",
    "dataloader_pin_memory": "not needed for the collated batches",
    "hf_hub_token": "nothing is downloaded during training",
    "ms_hub_token": "nothing is downloaded during training",
    "om_hub_token": "nothing is downloaded during training",
    "cache_dir": "models come from the registry, a local directory or the Hugging Face cache",
    "model_revision": "models come from the registry, a local directory or the Hugging Face cache",
    "image_max_pixels": "multimodal models are not supported",
    "image_min_pixels": "multimodal models are not supported",
    "video_max_pixels": "multimodal models are not supported",
    "video_min_pixels": "multimodal models are not supported",
    "video_fps": "multimodal models are not supported",
    "freeze_vision_tower": "multimodal models are not supported",
    "freeze_multi_modal_projector": "multimodal models are not supported",
    "ray_run_name": "Ray is not used; use --launch",
    "ray_num_workers": "Ray is not used; use --launch --num_processes",
    "do_eval": "evaluation during training follows val_size / eval_dataset; use `python -m workbench eval` after",
    "do_predict": "use `python -m workbench eval` for predictions",
    "predict_with_generate": "use `python -m workbench eval` for generation metrics",
    "compute_accuracy": "use `python -m workbench eval` for accuracy",
    "logging_dir": "TensorBoard logs go to output_dir/runs",
    "push_to_hub": "nothing is uploaded",
    "create_new_adapter": "a new adapter is always created unless adapter_name_or_path is given",
}

# Keys that look like LLaMA-Factory's but ask for something Workbench does not do: an error with a pointer.
UNSUPPORTED_KEYS: dict[str, str] = {
    "use_galore": "GaLore is not supported; use finetuning_type lora or freeze",
    "use_apollo": "APOLLO is not supported; use finetuning_type lora or freeze",
    "use_badam": "BAdam is not supported; use finetuning_type freeze",
    "pissa_init": "PiSSA initialisation is not supported",
    "loraplus_lr_ratio": "LoRA+ is not supported",
    "ref_model": "the DPO reference is the base model (the adapter switched off) or a frozen copy of it",
    "reward_model": "PPO is not supported",
    "rope_scaling": "RoPE scaling is not supported",
    "shift_attn": "shifted sparse attention is not supported",
}

# Fields of transformers' TrainingArguments that are not passed through: Workbench sets them itself, or they
# would be silently without effect here. Refused by name (unless given as false / 0 / none).
TRAINING_ARGUMENTS_REFUSED: dict[str, str] = {
    "remove_unused_columns": "the collators read the tokenised columns, so Workbench always keeps them",
    "label_names": "the labels column is always 'labels'",
    "prediction_loss_only": "evaluation during training reports the loss; use `python -m workbench eval` for "
                            "generation metrics",
    "include_for_metrics": "no compute_metrics runs during training; use `python -m workbench eval`",
    "batch_eval_metrics": "no compute_metrics runs during training; use `python -m workbench eval`",
    "label_smoothing_factor": "Workbench's trainers compute the loss themselves (for DPO use dpo_label_smoothing)",
    "use_cpu": "use device: cpu",
    "liger_kernel_config": "Workbench chooses Liger's kernels itself: set enable_liger_kernel (its fused linear "
                           "cross-entropy stays off, since Workbench's trainers compute the loss themselves)",
    "local_rank": "set by the launcher: use --launch --num_processes N",
    "parallelism_config": "an accelerate ParallelismConfig object cannot be given here; use accelerate_config",
}
# TrainingArguments fields about uploading: accepted with a warning, like push_to_hub.
TRAINING_ARGUMENTS_IGNORED: dict[str, str] = {
    name: "nothing is uploaded (push_to_hub is ignored)"
    for name in ("hub_token", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision")
}
# Qwen's finetune.py (Qwen/Qwen1.5/Qwen2/Qwen2.5 finetune.sh) options that have no Workbench counterpart; the
# ones that do are aliases (DataArgs.ALIASES, FinetuningArgs.ALIASES).
QWEN_IGNORED: dict[str, str] = {
    "lazy_preprocess": "Workbench tokenises the data once before training and caches it (Qwen's lazy mode "
                       "tokenises each example when first used); for data larger than memory use streaming",
    "lora_weight_path": "Qwen's finetune.py does not read it either; to continue from an adapter use "
                        "adapter_name_or_path",
}
QWEN_REFUSED: dict[str, str] = {
    "lora_bias": "LoRA biases are not trained (only lora_bias none)",
}
IGNORED_KEYS.update(TRAINING_ARGUMENTS_IGNORED)
IGNORED_KEYS.update(QWEN_IGNORED)
UNSUPPORTED_KEYS.update(TRAINING_ARGUMENTS_REFUSED)
UNSUPPORTED_KEYS.update(QWEN_REFUSED)
# Qwen's finetune.sh names DeepSpeed configs of its repository; the shipped presets are the same ZeRO stages.
QWEN_DEEPSPEED = {"ds_config_zero2.json": "ds_z2_config.json", "ds_config_zero3.json": "ds_z3_config.json"}


@dataclass
class FinetuningArgs(Options):
    # Qwen's finetune.py names (its README's finetune.sh runs with only the model path changed).
    ALIASES = {
        "use_lora": Alias("finetuning_type", "Qwen finetune.py: true means finetuning_type lora, false full",
                          convert=lambda v: "lora" if parse_bool(v) else "full", flag=True),
        "q_lora": Alias("quantization_bit", "Qwen finetune.py: true means QLoRA (quantization_bit 4, NF4, double "
                        "quantization); false sets nothing", convert=lambda v: 4 if parse_bool(v) else UNSET,
                        flag=True),
        "lora_r": Alias("lora_rank", "Qwen finetune.py / PEFT name for lora_rank"),
        "lora_target_modules": Alias("lora_target", "Qwen finetune.py: module names, as separate words or "
                                     "comma-separated", nargs="+"),
    }

    stage: str = option(
        "sft", "Training stage: pt (pre-training on text), sft (supervised, prompts masked), rm (reward model "
        "on preference pairs), dpo (direct preference optimisation)", choices=STAGES,
        label="Training stage", label_zh="训练阶段",
        help_zh="训练阶段：pt（在纯文本上预训练）、sft（监督微调，提示词不计损失）、rm（在偏好对上训练奖励模型）、"
                "dpo（直接偏好优化）",
    )
    finetuning_type: str = option(
        "lora", "Method: lora (adapters; with quantization_bit this is QLoRA), freeze (train the last layers), "
        "full (every weight)", choices=FINETUNING_TYPES, label="Fine-tuning method", label_zh="微调方法",
        help_zh="微调方法：lora（训练适配器；设置 quantization_bit 时即为 QLoRA）、freeze（只训练最后几层）、"
                "full（训练全部权重）",
    )
    lora_rank: int = option(8, "LoRA rank r", min=1, max=4096, group="lora",
                            label="LoRA rank", label_zh="LoRA 秩", help_zh="LoRA 的秩 r")
    lora_alpha: int | None = option(
        None, "LoRA scaling alpha (empty: 2 × lora_rank)", min=1, group="lora",
        label="LoRA alpha", label_zh="LoRA 缩放系数",
        help_zh="LoRA 缩放系数 alpha（留空：2 × lora_rank）",
    )
    lora_dropout: float = option(0.0, "Dropout on the LoRA input", min=0.0, max=0.99, group="lora",
                                 label="LoRA dropout", label_zh="LoRA 丢弃率", help_zh="LoRA 输入上的 dropout 比例")
    lora_target: str = option(
        "all", "Comma-separated module names to adapt (q_proj,v_proj, ...), or all for every linear layer except "
        "the output head", group="lora", label="LoRA target modules", label_zh="LoRA 作用模块",
        help_zh="要加 LoRA 的模块名，逗号分隔（如 q_proj,v_proj），或填 all 表示除输出层外的所有线性层",
    )
    additional_target: str | None = option(
        None, "Comma-separated modules trained in full and saved with the adapter (e.g. embed_tokens,lm_head)",
        group="lora", label="Extra modules trained in full", label_zh="附加训练模块",
        help_zh="全量训练并随适配器一起保存的模块，逗号分隔（如 embed_tokens,lm_head）",
    )
    use_dora: bool = option(False, "Weight-decomposed LoRA (DoRA)", group="lora", label="Use DoRA", label_zh="使用 DoRA",
                            help_zh="权重分解的 LoRA（DoRA）")
    use_rslora: bool = option(False, "Rank-stabilised LoRA scaling (alpha / sqrt(r))", group="lora",
                              label="Use rsLoRA", label_zh="使用 rsLoRA", help_zh="秩稳定的 LoRA 缩放（alpha / sqrt(r)）")
    freeze_trainable_layers: int = option(
        2, "freeze: train the last N layers (a negative N trains the first N)", group="freeze",
        label="Trainable layers", label_zh="可训练层数",
        help_zh="freeze：训练最后 N 层（N 为负数时训练最前面的 |N| 层）",
    )
    freeze_trainable_modules: str = option(
        "all", "freeze: modules trained inside those layers (all, or names such as mlp,self_attn)", group="freeze",
        label="Trainable modules", label_zh="可训练模块",
        help_zh="freeze：这些层中要训练的模块（all，或 mlp,self_attn 这样的模块名）",
    )
    freeze_extra_modules: str | None = option(
        None, "freeze: modules outside the layers to train too (e.g. embed_tokens,norm)", group="freeze",
        label="Extra trainable modules", label_zh="额外可训练模块",
        help_zh="freeze：这些层之外也要训练的模块（如 embed_tokens,norm）",
    )
    pref_beta: float = option(0.1, "DPO beta: higher stays closer to the reference model", min=0.0,
                              group="rlhf", label="DPO beta", label_zh="偏好 beta", help_zh="DPO 的 beta：越大越贴近参考模型")
    pref_loss: str = option("sigmoid", "DPO loss type (TRL)", choices=PREF_LOSSES, group="rlhf",
                            label="DPO loss", label_zh="偏好损失", help_zh="DPO 损失类型（TRL）")
    pref_ftx: float = option(0.0, "DPO: weight of an added SFT loss on the chosen answers (0 = none)", min=0.0,
                             group="rlhf", label="SFT loss weight", label_zh="SFT 损失系数",
                             help_zh="DPO：在优选回答上额外加入的 SFT 损失的权重（0 表示不加）")
    dpo_label_smoothing: float = option(0.0, "DPO label smoothing (robust / exo_pair losses)", min=0.0, max=0.5,
                                        group="rlhf", label="DPO label smoothing", label_zh="标签平滑",
                                        help_zh="DPO 标签平滑（用于 robust / exo_pair 损失）")
    plot_loss: bool = option(True, "Save loss.png (training and eval loss) in output_dir", group="output",
                             label="Save a loss plot", label_zh="绘制损失曲线",
                             help_zh="在 output_dir 中保存 loss.png（训练和验证损失曲线）")

    def validate(self) -> None:
        if self.freeze_trainable_layers == 0:
            raise OptionError("freeze_trainable_layers", "must not be 0 (last N layers; negative for the first N)")
        if not [t for t in self.lora_target.split(",") if t.strip()]:
            raise OptionError("lora_target", "name at least one module, or all")

    def lora_targets(self) -> list[str]:
        return [t.strip() for t in self.lora_target.split(",") if t.strip()]


@dataclass
class TrainArgs(Options):
    """How to train: Hugging Face ``TrainingArguments`` names. The declared fields below are the ones the Train
    tab shows or Workbench acts on; every other TrainingArguments field is added by
    :func:`_with_training_arguments` and passed through unchanged."""

    ALIASES = {
        "evaluation_strategy": Alias("eval_strategy", "transformers' older name for eval_strategy"),
        "activation_checkpointing": Alias("gradient_checkpointing", "transformers 5's name for gradient_checkpointing",
                                          flag=True),
        "use_liger_kernel": Alias("enable_liger_kernel", "transformers' name for enable_liger_kernel", flag=True),
        "gradient_checkpointing_kwargs": Alias("activation_checkpointing_kwargs",
                                               "transformers' older name for activation_checkpointing_kwargs"),
    }

    output_dir: str | None = option(
        None, "Where the adapter, checkpoints, progress.jsonl and config.yaml go (empty: a new directory under "
        "the runs directory)", group="output", label="Output folder", label_zh="输出目录",
        help_zh="适配器、检查点、progress.jsonl 和 config.yaml 的保存位置（留空：在 runs 目录下新建一个目录）",
    )
    overwrite_output_dir: bool = option(
        False, "Start over in an output_dir that holds another run (its checkpoints and results are removed)",
        group="output", label="Overwrite the output folder", label_zh="覆盖输出目录",
        help_zh="在已有其他运行的 output_dir 中重新开始（会删除其中的检查点和结果）",
    )
    do_train: bool = option(True, "Train (always true here; evaluation is `python -m workbench eval`)", ui=False,
                            label="Train", label_zh="执行训练",
                            help_zh="执行训练（此处始终为 true；评测请用 `python -m workbench eval`）")
    per_device_train_batch_size: int = option(4, "Examples per device per step", min=1,
                                              label="Batch size (per device)", label_zh="批大小",
                                              help_zh="每个设备每步的样本数")
    per_device_eval_batch_size: int = option(4, "Examples per device per eval step", min=1, group="eval",
                                             label="Eval batch size (per device)", label_zh="验证批大小",
                                             help_zh="验证时每个设备每步的样本数")
    gradient_accumulation_steps: int = option(1, "Steps whose gradients are summed before each update", min=1,
                                              label="Gradient accumulation steps", label_zh="梯度累积",
                                              help_zh="每次参数更新前累积梯度的步数")
    learning_rate: float = option(5e-5, "Peak learning rate", min=0.0, step=1e-5,
                                  label="Learning rate", label_zh="学习率", help_zh="峰值学习率")
    num_train_epochs: float = option(3.0, "Passes over the training set (ignored when max_steps > 0)", min=0.0,
                                     label="Epochs", label_zh="训练轮数", help_zh="遍历训练集的轮数（max_steps > 0 时忽略）")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: use num_train_epochs)", min=-1,
                            label="Max steps", label_zh="最大步数", help_zh="达到此优化步数后停止（-1：按 num_train_epochs 训练）")
    lr_scheduler_type: str = option("cosine", "Learning-rate schedule", choices=SCHEDULERS,
                                    label="Learning-rate schedule", label_zh="学习率调度", help_zh="学习率调度策略")
    warmup_steps: float = option(0, "Linear warm-up steps (a value below 1 is a fraction of all steps)", min=0, step=1,
                                 label="Warm-up steps", label_zh="预热步数", help_zh="线性预热步数（小于 1 时表示占总步数的比例）")
    warmup_ratio: float = option(0.0, "Warm-up as a fraction of all steps (used when warmup_steps is 0)",
                                 min=0.0, max=1.0, label="Warm-up ratio", label_zh="预热比例",
                                 help_zh="预热步数占总步数的比例（warmup_steps 为 0 时使用）")
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0,
                                 label="Weight decay", label_zh="权重衰减", help_zh="AdamW 的权重衰减")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 = off)", min=0.0,
                                  label="Gradient clipping (max norm)", label_zh="梯度裁剪",
                                  help_zh="梯度裁剪的范数阈值（0 表示不裁剪）")
    optim: str = option("adamw_torch", "Optimiser", choices=OPTIMIZERS, group="advanced",
                        label="Optimiser", label_zh="优化器",
                        help_zh="优化器")
    bf16: bool = option(
        False, "bfloat16 mixed precision (GPUs that support it; CPUs with AVX512-BF16/AMX run it as autocast)",
        label="bf16 mixed precision", label_zh="bf16 混合精度",
        help_zh="bfloat16 混合精度（需 GPU 支持；支持 AVX512-BF16/AMX 的 CPU 以 autocast 方式运行）",
    )
    fp16: bool = option(False, "float16 mixed precision (CUDA GPUs only)",
                        label="fp16 mixed precision", label_zh="fp16 混合精度",
                        help_zh="float16 混合精度（仅限 CUDA GPU）")
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass: less memory, about 30% slower", group="advanced",
        label="Gradient checkpointing", label_zh="梯度检查点",
        help_zh="反向传播时重新计算激活值：更省显存/内存，速度约慢 30%",
    )
    padding_free: bool = option(
        True, "Concatenate each batch into one row (position ids restart per example, no padding) and compute "
        "the output layer only where there is a label (pt/sft)", group="advanced",
        label="Padding-free batches", label_zh="无填充批处理",
        help_zh="把每个批次拼成一行（每个样本的 position id 重新计数，无填充），且只在有标签的位置计算输出层（pt/sft）",
    )
    group_by_length: bool = option(
        False, "Batch examples of similar length together (less padding when padding_free is off)",
        group="advanced", label="Group by length", label_zh="按长度分组",
        help_zh="把长度相近的样本放进同一批（关闭 padding_free 时可减少填充）",
    )
    logging_steps: int = option(5, "Write a progress line every N steps", min=1, group="output",
                                label="Log every N steps", label_zh="日志间隔", help_zh="每 N 步记录一行进度")
    save_strategy: str = option("steps", "When to save checkpoints", choices=("steps", "epoch", "no"),
                                group="output", label="When to save checkpoints", label_zh="保存策略", help_zh="何时保存检查点")
    save_steps: int = option(100, "Save a checkpoint every N steps", min=1, group="output",
                             label="Save every N steps", label_zh="保存间隔",
                             help_zh="每 N 步保存一个检查点")
    save_total_limit: int | None = option(
        None, "Keep at most this many checkpoints (oldest removed first; empty: keep all)", min=1, group="output",
        label="Checkpoints to keep", label_zh="最多保留检查点",
        help_zh="最多保留的检查点数（先删除最旧的；留空：全部保留）",
    )
    eval_strategy: str | None = option(
        None, "When to evaluate: steps, epoch or no (empty: every eval_steps when there is an eval set)",
        choices=("no", "steps", "epoch"), group="eval", label="When to evaluate", label_zh="验证策略",
        help_zh="何时验证：steps、epoch 或 no（留空：有验证集时每 eval_steps 步验证一次）",
    )
    eval_steps: int | None = option(None, "Evaluate every N steps (empty: every save_steps)", min=1, group="eval",
                                    label="Evaluate every N steps", label_zh="验证间隔",
                                    help_zh="每 N 步验证一次（留空：与 save_steps 相同）")
    load_best_model_at_end: bool = option(
        False, "At the end, keep the checkpoint with the lowest eval loss instead of the last one (needs an eval set "
        "and a checkpoint saved at each evaluation)", group="eval", label="Keep the best checkpoint",
        label_zh="保留最佳检查点",
        help_zh="训练结束时保留验证损失最低的检查点，而不是最后一个（需要验证集，并在每次验证时保存检查点）",
    )
    early_stopping_patience: int | None = option(
        None, "Stop when the eval loss has not improved for this many evaluations in a row (empty: never)", min=1,
        group="eval", label="Early stopping patience", label_zh="早停耐心值",
        help_zh="验证损失连续这么多次验证没有下降时停止训练（留空：不早停）",
    )
    seed: int = option(42, "Random seed (same seed, data and config → same loss curve on CPU)", group="advanced",
                       label="Seed", label_zh="随机种子", help_zh="随机种子（在 CPU 上，种子、数据和配置相同 → 损失曲线相同）")
    full_determinism: bool = option(False, "Deterministic kernels too (slower; for exact GPU reproducibility)",
                                    group="advanced", label="Full determinism", label_zh="完全确定性",
                                    help_zh="同时启用确定性算子（更慢；用于在 GPU 上精确复现）")
    resume_from_checkpoint: str | None = option(
        None, "Resume from a checkpoint directory, or true for the latest checkpoint in output_dir",
        group="output", label="Resume from checkpoint", label_zh="从检查点恢复",
        help_zh="从检查点目录恢复训练；填 true 则从 output_dir 中最新的检查点恢复",
    )
    deepspeed: str | None = option(
        None, "DeepSpeed JSON config (a path, or z2, z3, z2_offload, z3_offload for presets/deepspeed/)",
        group="distributed", label="DeepSpeed config", label_zh="DeepSpeed 配置",
        help_zh="DeepSpeed JSON 配置（文件路径，或 z2、z3、z2_offload、z3_offload 以使用 presets/deepspeed/ 中的预设）",
    )
    ddp_timeout: int = option(1800, "Seconds a process waits for the others (raise for slow multi-node starts)",
                              min=1, group="distributed", ui=False,
                              label="DDP timeout (seconds)", label_zh="DDP 超时", help_zh="进程等待其他进程的秒数（多机启动较慢时调大）")
    save_only_model: bool = option(
        False, "Checkpoints without optimizer/scheduler state (smaller, but such a run cannot resume)",
        group="output", ui=False,
        label="Save the model only", label_zh="仅保存模型", help_zh="检查点不保存优化器/调度器状态（体积更小，但无法据此恢复训练）",
    )
    dataloader_num_workers: int = option(0, "Worker processes collating batches (0: the main process)", min=0,
                                         group="advanced", ui=False,
                                         label="Data loader workers", label_zh="数据加载进程数",
                                         help_zh="整理批次的工作进程数（0：在主进程中完成）")
    torch_threads: int | None = option(
        None, "CPU threads per training process (empty: the cores this process may use ÷ the processes on this "
              "machine, so ranks do not fight over cores)", min=1, group="advanced", ui=False,
        label="CPU threads", label_zh="CPU 线程数", help_zh="每个训练进程的 CPU 线程数（留空：本进程可用的核数 ÷ 本机的进程数，避免进程争抢核心）",
    )
    ddp_find_unused_parameters: bool | None = option(
        None, "DDP: look for parameters without gradients (empty: off, as every trained parameter gets one; "
              "on costs a graph walk per step)", group="distributed", ui=False,
        label="Find unused parameters (DDP)", label_zh="查找未使用参数", help_zh="DDP：查找没有梯度的参数（留空：自动）",
    )
    report_to: str = option(
        "none", "Also log to: none, tensorboard, wandb, mlflow (comma-separated)", group="output",
        label="Also log to", label_zh="日志后端",
        help_zh="同时记录到：none、tensorboard、wandb、mlflow（逗号分隔）",
    )
    run_name: str | None = option(None, "Run name for tensorboard/wandb/mlflow (empty: the output_dir name)",
                                  group="output", label="Run name (loggers)", label_zh="运行名称",
                                  help_zh="在 tensorboard/wandb/mlflow 中显示的运行名称（留空：output_dir 的名称）")
    enable_liger_kernel: bool = option(
        False, f"Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (less GPU memory, faster steps; CUDA GPUs only; "
        f"install them with: {LIGER_INSTALL})", group="advanced", label="Liger kernels", label_zh="Liger 内核",
        help_zh=f"使用 Liger 的 Triton 内核（RMSNorm、RoPE、SwiGLU）：更省显存、每步更快；仅限 CUDA GPU；"
                f"安装命令：{LIGER_INSTALL}",
    )
    torch_compile: bool = option(False, "Compile the model with torch.compile: a minute or more before the first "
                                        "step, then faster steps (about 10% per step measured on a 2-core CPU)",
                                 group="advanced", label="torch.compile", label_zh="torch.compile",
                                 help_zh="用 torch.compile 编译模型：第一步前需一分钟或更久，之后每步更快（在双核 CPU 上实测每步约快 10%）")
    disable_tqdm: bool = option(True, "Hide the progress bar (progress lines are printed instead)",
                                group="output", ui=False,
                                label="Hide the progress bar", label_zh="隐藏进度条", help_zh="隐藏进度条（改为打印进度行）")

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise OptionError("learning_rate", f"{self.learning_rate} must be greater than 0")
        if self.bf16 and self.fp16:
            raise OptionError("fp16", "choose one of bf16 and fp16, not both")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise OptionError("num_train_epochs", "must be above 0 unless max_steps is set")
        if not self.do_train:
            raise OptionError("do_train", "false is not supported: evaluate with `python -m workbench eval`")
        sampling = getattr(self, "train_sampling_strategy", "random")
        if self.group_by_length and sampling not in ("random", "group_by_length"):
            raise OptionError("train_sampling_strategy", f"{sampling} contradicts group_by_length; set one of them")
        self.report_to = ",".join(self.report_backends()) or "none"
        if self.resume_from_checkpoint is not None:
            text = str(self.resume_from_checkpoint).strip()
            if text.lower() in ("false", "no", "none", ""):
                self.resume_from_checkpoint = None
            elif text.lower() in ("true", "yes", "latest"):
                self.resume_from_checkpoint = "true"

    def passthrough(self) -> dict[str, Any]:
        """The TrainingArguments fields Workbench does not declare, where they differ from transformers' default:
        keyword arguments passed to TrainingArguments (and TRL's configs) unchanged."""
        out = {}
        for name, f in option_fields(type(self)).items():
            if f.metadata.get("passthrough"):
                value = getattr(self, name)
                if value != _default(f):
                    out[name] = value
        return out

    def to_dict(self, non_default_only: bool = False) -> dict[str, Any]:
        """Declared options always (unless ``non_default_only``); pass-through ones only where set."""
        out = super().to_dict(non_default_only)
        fields_ = option_fields(type(self))
        return {k: v for k, v in out.items() if not fields_[k].metadata.get("passthrough") or v != _default(fields_[k])}

    def report_backends(self) -> list[str]:
        names = [n.strip().lower() for n in self.report_to.split(",") if n.strip()]
        for name in names:
            if name not in REPORT_TO:
                raise OptionError("report_to", f"{name!r} is not one of: {', '.join(REPORT_TO)}")
        return [n for n in names if n != "none"]


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


TRAINING_ARGUMENTS_GROUP = "TrainingArguments options passed to transformers unchanged"


def _with_training_arguments(declared: type) -> type:
    """``declared`` plus one option per remaining ``transformers.TrainingArguments`` field (type, default and help
    from that dataclass), not shown in the Train tab and listed under their own heading in ``--help``."""
    from transformers import TrainingArguments

    taken = set(IGNORED_KEYS) | set(UNSUPPORTED_KEYS)
    for cls in (ModelArgs, DataArgs, FinetuningArgs, declared, LaunchArgs):
        taken |= set(option_fields(cls)) | set(aliases_of(cls))
    extra = mirror_fields(TrainingArguments, skip=taken, paths=("accelerator_config", "fsdp_config"),
                          group="advanced", ui=False, passthrough=True, cli_group=TRAINING_ARGUMENTS_GROUP)
    cls = dataclasses.make_dataclass(declared.__name__, extra, bases=(declared,))
    cls.__module__, cls.__qualname__, cls.__doc__ = declared.__module__, declared.__qualname__, declared.__doc__
    return cls


@dataclass
class LaunchArgs(Options):
    """How many processes run the training (``--launch`` wraps it in ``accelerate launch``)."""

    launch: bool = option(False, "Run under accelerate launch (several processes, DeepSpeed, several machines)",
                          group="distributed", label="Launch with accelerate", label_zh="使用 accelerate 启动",
                          help_zh="通过 accelerate launch 运行（多进程、DeepSpeed、多机）")
    num_processes: int = option(1, "Processes in total, over all machines (one per GPU; on a CPU, data-parallel gloo ranks)",
                                min=1, group="distributed", label="Processes", label_zh="进程数",
                                help_zh="所有机器上的进程总数（每个 GPU 一个；在 CPU 上为 gloo 数据并行的进程）")
    multi_gpu: bool = option(False, "Data parallel over several processes (implied by num_processes > 1)",
                             group="distributed", label="Data parallel (several processes)", label_zh="多进程数据并行",
                             help_zh="多进程数据并行（num_processes > 1 时自动开启）")
    num_machines: int = option(1, "Machines taking part (multi-node)", min=1, group="distributed",
                               label="Machines", label_zh="机器数", help_zh="参与训练的机器数（多机）")
    machine_rank: int = option(0, "This machine's rank (0 = the main machine)", min=0, group="distributed",
                               label="This machine's rank", label_zh="机器编号", help_zh="本机编号（0 为主节点）")
    main_process_ip: str | None = option(None, "Address of machine 0 (multi-node)", group="distributed",
                                         label="Main machine's address", label_zh="主节点地址", help_zh="0 号机器的地址（多机）")
    main_process_port: int | None = option(None, "Port on machine 0 (multi-node; empty: accelerate's default)",
                                           min=1, max=65535, group="distributed",
                                           label="Main machine's port", label_zh="主节点端口",
                                           help_zh="0 号机器上的端口（多机；留空：accelerate 的默认端口）")
    accelerate_config: str | None = option(None, "An accelerate config file (from `accelerate config`)",
                                           group="distributed",
                                           label="accelerate config file", label_zh="accelerate 配置文件",
                                           help_zh="accelerate 配置文件（由 `accelerate config` 生成）")

    def validate(self) -> None:
        if self.num_machines > 1 and not self.main_process_ip:
            raise OptionError("main_process_ip", "is required when num_machines > 1")
        if self.machine_rank >= self.num_machines:
            raise OptionError("machine_rank", f"{self.machine_rank} must be below num_machines ({self.num_machines})")
        if self.accelerate_config and not Path(self.accelerate_config).expanduser().is_file():
            raise OptionError("accelerate_config", f"{self.accelerate_config} does not exist")


@dataclass
class TrainConfig:
    """One training run: the four option groups plus warnings about ignored keys."""

    model: ModelArgs
    data: DataArgs
    finetuning: FinetuningArgs
    train: TrainArgs
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as flat LLaMA-Factory-style keys (what config.yaml holds)."""
        out: dict[str, Any] = {}
        for part in (self.model, self.data, self.finetuning, self.train):
            for key, value in part.to_dict().items():
                out.setdefault(key, value)
        return out


TrainArgs = _with_training_arguments(TrainArgs)  # noqa: F811 - the declared options plus TrainingArguments'
TRAIN_CLASSES = (ModelArgs, DataArgs, FinetuningArgs, TrainArgs)


def _asks_for_something(value: Any) -> bool:
    """False for the values that ask for nothing: empty, none, false, 0."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    text = str(value).strip().lower()
    return text not in ("", "none", "null", "false", "no", "off", "0", "0.0")


def parse_train_config(values: Mapping[str, Any]) -> TrainConfig:
    """Flat mapping (YAML merged with CLI overrides) → validated TrainConfig; no model or data is touched."""
    values = dict(values)
    for key, reason in UNSUPPORTED_KEYS.items():
        if key in values and _asks_for_something(values[key]):
            raise OptionError(key, reason)
        values.pop(key, None)
    if str(values.get("pref_loss", "")).lower() in ("orpo", "simpo", "kto_pair"):
        raise OptionError("pref_loss", f"{values['pref_loss']!r} is not a DPO loss in TRL; choose one of: "
                                       f"{', '.join(PREF_LOSSES)}")
    if str(values.get("stage", "")).lower() in ("ppo", "kto"):
        raise OptionError("stage", f"{values['stage']!r} is not supported; choose one of: {', '.join(STAGES)}")
    (model, data, finetuning, train), warnings = split_mapping(TRAIN_CLASSES, values, ignored=IGNORED_KEYS)
    config = TrainConfig(model, data, finetuning, train, warnings)
    check_combination(config)
    return config


def check_combination(cfg: TrainConfig) -> None:
    """Rules that span option groups; they need no model and no data."""
    ft, tr, data, model = cfg.finetuning, cfg.train, cfg.data, cfg.model
    if not data.dataset_names():
        raise OptionError("dataset", "name at least one dataset (see data/dataset_info.json)")
    if model.quantization_bit and ft.finetuning_type != "lora":
        raise OptionError(
            "quantization_bit",
            f"a {model.quantization_bit}-bit quantized model can only be trained with finetuning_type lora (QLoRA), "
            f"not {ft.finetuning_type}",
        )
    if model.adapter_name_or_path and ft.finetuning_type != "lora":
        raise OptionError("adapter_name_or_path", "continuing from an adapter needs finetuning_type lora")
    if model.adapter_name_or_path and ft.stage not in ("pt", "sft"):
        raise OptionError("adapter_name_or_path", f"continuing from an adapter is supported for pt and sft, "
                                                  f"not {ft.stage}")
    if model.adapter_name_or_path and len(model.adapter_map()) > 1:
        raise OptionError("adapter_name_or_path", "training continues from one adapter; give a single directory")
    if data.packing and ft.stage not in ("pt", "sft"):
        raise OptionError("packing", f"packing applies to pt and sft, not {ft.stage}")
    if data.streaming and tr.max_steps <= 0:
        raise OptionError("max_steps", "streaming datasets have no length: set max_steps")
    has_eval = bool(data.val_size) or bool(data.eval_dataset_names())
    if tr.eval_strategy in ("steps", "epoch") and not has_eval:
        raise OptionError("eval_strategy", f"{tr.eval_strategy} needs an eval set: set val_size or eval_dataset")
    check_best_model_options(tr, has_eval)
    if tr.deepspeed:
        resolve_deepspeed_config(tr.deepspeed)
    if tr.enable_liger_kernel:
        check_liger_kernel(model.device)
    for backend in tr.report_backends():
        if backend in ("wandb", "mlflow"):
            if importlib.util.find_spec(backend) is None:
                raise OptionError("report_to", f"{backend} is not installed (pip install {backend})")


def check_best_model_options(tr: TrainArgs, has_eval: bool) -> None:
    """load_best_model_at_end and early stopping: an eval set, evaluations, and (to pick a best checkpoint) a
    checkpoint at every evaluation — transformers' rules, named before a run starts."""
    for name in ("load_best_model_at_end", "early_stopping_patience"):
        if getattr(tr, name):
            if not has_eval:
                raise OptionError(name, "needs an eval set: set val_size or eval_dataset")
            if tr.eval_strategy == "no":
                raise OptionError(name, "needs evaluations, and eval_strategy is no")
    if not tr.load_best_model_at_end:
        return
    evaluate = tr.eval_strategy or "steps"
    if tr.save_strategy == "no":
        raise OptionError("save_strategy", "load_best_model_at_end needs checkpoints to choose from: use steps or "
                                           "epoch")
    if tr.save_strategy != evaluate:
        raise OptionError("save_strategy", f"load_best_model_at_end needs a checkpoint at each evaluation: "
                                           f"save_strategy {tr.save_strategy} differs from eval_strategy {evaluate}")
    if evaluate == "steps" and tr.eval_steps and tr.save_steps % tr.eval_steps:
        raise OptionError("eval_steps", f"load_best_model_at_end needs a checkpoint at each evaluation: save_steps "
                                        f"({tr.save_steps}) must be a multiple of eval_steps ({tr.eval_steps})")


def resolve_deepspeed_config(value: str) -> Path:
    """A DeepSpeed JSON path or preset name → an existing JSON file (checked to be a JSON object)."""
    name = value.strip()
    if name in DEEPSPEED_PRESETS:
        path = project_presets_dir() / "deepspeed" / DEEPSPEED_PRESETS[name]
    else:
        path = Path(name).expanduser()
        # LLaMA-Factory YAML names examples/deepspeed/ds_z3_config.json: the same file names live in presets/deepspeed/.
        shipped = project_presets_dir() / "deepspeed" / QWEN_DEEPSPEED.get(path.name, path.name)
        if not path.is_file() and shipped.is_file():
            path = shipped
    if not path.is_file():
        raise OptionError(
            "deepspeed", f"{value}: no such file (give a JSON path or one of {', '.join(DEEPSPEED_PRESETS)})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OptionError("deepspeed", f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OptionError("deepspeed", f"{path}: expected a JSON object")
    return path.resolve()


def check_deepspeed_installed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise WorkbenchError(
            f"deepspeed is set but the deepspeed package is not installed; install it with: {DEEPSPEED_INSTALL} "
            "(on a CUDA machine; it keeps the installed torch)"
        )


def check_liger_kernel(device: str = "auto") -> None:
    """enable_liger_kernel runs where Liger's kernels run: a CUDA GPU with the liger-kernel package installed."""
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if not str(device).startswith("cuda") or not has_cuda:
        where = f"this run's device is {device}" + ("" if has_cuda else " (no CUDA GPU is visible here)")
        raise OptionError("enable_liger_kernel", f"Liger's kernels are Triton kernels for CUDA GPUs, and {where}; leave "
                                                 f"enable_liger_kernel off here (on a CUDA machine install them with: "
                                                 f"{LIGER_INSTALL})")
    if importlib.util.find_spec("liger_kernel") is None:
        raise OptionError("enable_liger_kernel", f"the liger-kernel package is not installed; install it with: "
                                                 f"{LIGER_INSTALL}")
