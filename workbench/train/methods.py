"""Fine-tuning methods: which weights train, checked against the model's real module names.

The checks run on a weightless copy of the model built from its config (``meta`` device), so a
wrong ``lora_target`` or ``freeze_trainable_layers`` is reported before gigabytes of weights load.
"""

from __future__ import annotations

import re
from typing import Any

from workbench.config.base import OptionError, WorkbenchError
from workbench.config.train import FinetuningArgs

# Containers of the transformer blocks in common architectures (llama/qwen/mistral: layers; gpt2: h; ...).
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|decoder\.layers)\.(\d+)\.")
_HEADS = ("lm_head", "score", "classifier", "embed_out", "output")


def skeleton(model_path: str, *, reward: bool = False, trust_remote_code: bool = False):
    """The model's modules without weights (meta device): cheap even for 70B models."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any unreadable config is the user's to fix
        raise WorkbenchError(f"{model_path}: cannot read config.json ({exc})") from None
    if reward:
        config.num_labels = 1
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    with torch.device("meta"):
        try:
            return cls.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            kind = "reward (sequence classification)" if reward else "causal language"
            raise WorkbenchError(f"{model_path}: this architecture has no {kind} model head ({exc})") from None


def _is_linear(module) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    # bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear; GPT-2 style Conv1D does not.
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_names(model) -> list[str]:
    """Leaf names of the linear layers LoRA can adapt (the output/score head excluded)."""
    names = set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full, module in model.named_modules():
        if not full or not _is_linear(module) or module is out_emb:
            continue
        leaf = full.rsplit(".", 1)[-1]
        if leaf in _HEADS:
            continue
        names.add(leaf)
    return sorted(names)


def resolve_lora_targets(model, fargs: FinetuningArgs) -> list[str]:
    """``all`` → every linear layer; otherwise check each name exists (list the available ones if not)."""
    available = linear_names(model)
    targets = fargs.lora_targets()
    if [t.lower() for t in targets] == ["all"]:
        if not available:
            raise OptionError("lora_target", "the model has no linear layers to adapt")
        return available
    module_names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise OptionError(
            "lora_target",
            f"{', '.join(missing)} match(es) no module of this model; its linear layers are: {', '.join(available)} "
            "(or use all)",
        )
    return targets


def resolve_modules_to_save(model, fargs: FinetuningArgs) -> list[str] | None:
    if not fargs.additional_target:
        return None
    names = [t.strip() for t in fargs.additional_target.split(",") if t.strip()]
    module_names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        top = sorted({n.split(".")[-1] for n in module_names if not _LAYER_RE.search(n + ".")})
        raise OptionError("additional_target", f"{', '.join(missing)} match(es) no module; candidates: {', '.join(top)}")
    return names


def num_layers(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        found = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_RE.search(name))}
        n = max(found) + 1 if found else 0
    return int(n)


def freeze_plan(model, fargs: FinetuningArgs) -> list[str]:
    """Names of the parameters that train under ``finetuning_type freeze`` (validated)."""
    total = num_layers(model)
    n = fargs.freeze_trainable_layers
    if total == 0:
        raise OptionError("finetuning_type", "freeze needs a model with numbered layers; use lora or full")
    if abs(n) > total:
        raise OptionError("freeze_trainable_layers", f"{n}: the model has only {total} layers")
    layer_ids = set(range(total - n, total)) if n > 0 else set(range(-n))
    wanted = [m.strip() for m in fargs.freeze_trainable_modules.split(",") if m.strip()]
    extra = [m.strip() for m in (fargs.freeze_extra_modules or "").split(",") if m.strip()]
    params = [name for name, _ in model.named_parameters()]
    in_layers = [name for name in params if _LAYER_RE.search(name)]
    if wanted != ["all"]:
        missing = [m for m in wanted if not any(f".{m}." in name for name in in_layers)]
        if missing:
            parts = sorted({name[_LAYER_RE.search(name).end():].split(".")[0] for name in in_layers})
            raise OptionError("freeze_trainable_modules",
                              f"{', '.join(missing)} not found in the layers; they hold: {', '.join(parts)} (or all)")
    if extra:
        outside = [name for name in params if not _LAYER_RE.search(name)]
        missing = [m for m in extra if not any(f".{m}." in f".{name}" for name in outside)]
        if missing:
            parts = sorted({name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name for name in outside})
            raise OptionError("freeze_extra_modules",
                              f"{', '.join(missing)} not found outside the layers; candidates: {', '.join(parts)}")
    chosen = []
    for name in params:
        match = _LAYER_RE.search(name)
        if match:
            ok = int(match.group(1)) in layer_ids and (wanted == ["all"] or any(f".{m}." in name for m in wanted))
        else:
            ok = any(f".{m}." in f".{name}" for m in extra)
        if ok:
            chosen.append(name)
    return chosen


def preflight(model_path: str, fargs: FinetuningArgs, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Check the method against the model's modules without loading weights; returns the resolved plan."""
    model = skeleton(model_path, reward=fargs.stage == "rm", trust_remote_code=trust_remote_code)
    plan: dict[str, Any] = {"num_layers": num_layers(model)}
    if fargs.finetuning_type == "lora":
        plan["lora_target"] = resolve_lora_targets(model, fargs)
        plan["modules_to_save"] = resolve_modules_to_save(model, fargs)
    elif fargs.finetuning_type == "freeze":
        plan["trainable"] = freeze_plan(model, fargs)
    return plan


def lora_config(fargs: FinetuningArgs, targets: list[str], modules_to_save: list[str] | None, *, reward: bool):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=fargs.lora_rank,
        lora_alpha=fargs.lora_alpha or 2 * fargs.lora_rank,
        lora_dropout=fargs.lora_dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        use_dora=fargs.use_dora,
        use_rslora=fargs.use_rslora,
        # An embedding trained in full must stay tied to the output head when the model ties them.
        ensure_weight_tying=bool(modules_to_save),
        task_type=TaskType.SEQ_CLS if reward else TaskType.CAUSAL_LM,
    )


def prepare_model(model, fargs: FinetuningArgs, plan: dict[str, Any], *, quantized: bool,
                  gradient_checkpointing: bool, upcast_trainable: bool):
    """Set ``requires_grad`` for the method; returns (model, peft_config or None).

    LoRA returns the config rather than wrapping the model, because TRL's trainers wrap it themselves
    (DPO then uses the adapter-off model as the reference without a second copy).
    """
    import torch

    if fargs.finetuning_type == "lora":
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        else:
            for p in model.parameters():
                p.requires_grad_(False)
        return model, lora_config(fargs, plan["lora_target"], plan.get("modules_to_save"),
                                  reward=fargs.stage == "rm")
    if fargs.finetuning_type == "freeze":
        trainable = set(plan["trainable"])
        if fargs.stage == "rm":  # the new score head always trains
            trainable |= {n for n, _ in model.named_parameters() if n.split(".")[0] in ("score", "classifier")}
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
    else:  # full
        for p in model.parameters():
            p.requires_grad_(True)
    if upcast_trainable:
        # Half-precision weights that the optimiser updates lose small steps; keep trainable ones in float32.
        for p in model.parameters():
            if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
    return model, None


def count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            # Packed two 4-bit values per byte, in elements of bnb_4bit_quant_storage (uint8, bf16 or float32).
            n *= p.element_size() * 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def cast_frozen_linears(model, dtype) -> int:
    """Store the frozen weights of a LoRA run's linear layers in the autocast dtype; returns how many.

    Under bf16/fp16 autocast every matmul casts its float32 weight to the half dtype on every call: the
    profile of a LoRA step on CPU showed those copies at ~15% of the time. Casting once gives the same
    numbers (autocast rounds the same way) without the copies. Weights tied to the input embeddings stay
    float32 (the embedding output feeds the float32 residual stream), and trained weights stay untouched.
    """
    import torch

    embeddings = model.get_input_embeddings()
    tied = {id(embeddings.weight)} if embeddings is not None else set()
    count = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in tied:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        module.weight.data = weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
        count += 1
    return count
