"""How much memory a training run needs, how much there is, and a clear refusal when it will not fit.

The estimate is deliberately rough (weights + trainable state + activations + runtime overhead);
its job is to stop a start that cannot work on a small machine — say, while the chat model is
loaded — with a message that gives both numbers, not to plan a cluster.

``WORKBENCH_MAX_MEMORY`` (bytes, or a size such as ``6GiB``) caps what Workbench treats as
available, for machines shared with other work.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from workbench.config.base import WorkbenchError

GiB = 1 << 30
RUNTIME_OVERHEAD = int(0.6 * GiB)  # python + torch + tokenizer + data, measured on CPU runs
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": GiB, "t": 1e12, "tb": 1e12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    m = _SIZE.match(str(text))
    if not m or m.group(2) is not None and m.group(2).lower() not in _UNITS:
        raise WorkbenchError(f"WORKBENCH_MAX_MEMORY={text!r}: expected bytes or a size such as 6GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / (1 << 20):.0f} MiB"


@dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int


def model_shape(model_path: str | Path) -> ModelShape | None:
    """Parameter count and sizes from a local model directory (config.json + safetensors headers)."""
    path = Path(model_path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    params = 0
    for shard in path.glob("*.safetensors"):
        try:
            with open(shard, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError):
            return None
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info.get("shape", []):
                    count *= int(dim)
                params += count
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    vocab = int(config.get("vocab_size") or 0)
    if not params and hidden and layers and vocab:  # no safetensors: a standard decoder's count
        inter = int(config.get("intermediate_size") or 4 * hidden)
        params = vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
    return ModelShape(params, hidden, layers, vocab) if params else None


def estimate_train_memory(shape: ModelShape, *, finetuning_type: str, quantization_bit: int | None,
                          weight_bytes: int, batch_size: int, cutoff_len: int, gradient_checkpointing: bool,
                          trainable_fraction: float | None = None) -> int:
    """Bytes one training process needs, roughly."""
    if quantization_bit == 4:
        weights = shape.params * 0.55
    elif quantization_bit == 8:
        weights = shape.params * 1.1
    else:
        weights = shape.params * weight_bytes
    if trainable_fraction is None:
        trainable_fraction = {"full": 1.0, "freeze": 0.15, "lora": 0.01}.get(finetuning_type, 1.0)
    # gradient + two Adam moments in float32 (+ a float32 master copy when the weights are half precision)
    state = shape.params * trainable_fraction * (12 + (4 if weight_bytes < 4 else 0))
    tokens = batch_size * cutoff_len
    per_layer = shape.hidden * 34 * max(weight_bytes, 2) // 2  # activations kept for the backward pass
    activations = tokens * per_layer * (1 if gradient_checkpointing else max(shape.layers, 1))
    logits = tokens * shape.vocab * 4 * 2  # float32 logits and their gradient
    return int(weights + state + activations + logits + RUNTIME_OVERHEAD)


def available_memory(device: str) -> tuple[int, str]:
    """(bytes free for a new process on ``device``, what was measured)."""
    cap = os.environ.get("WORKBENCH_MAX_MEMORY")
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else 0
        free, _ = torch.cuda.mem_get_info(index)
        where = f"free on GPU {index}"
    else:
        import psutil

        free, where = psutil.virtual_memory().available, "available RAM"
    if cap:
        limit = parse_size(cap)
        if limit < free:
            return limit, f"{where}, capped by WORKBENCH_MAX_MEMORY"
    return int(free), where


def check_train_fits(needed: int, device: str, *, chat_model_bytes: int = 0, chat_model: str = "") -> None:
    """Refuse a start that will not fit, saying what it needs and what would free memory."""
    free, where = available_memory(device)
    if needed <= free:
        return
    message = (f"this training run needs about {fmt_bytes(needed)} of memory on {device}, but only "
               f"{fmt_bytes(free)} is {where}.")
    if chat_model_bytes:
        message += (f" The chat model {chat_model} holds about {fmt_bytes(chat_model_bytes)}: unload it with "
                    "Unload in the top bar, then start again.")
    else:
        message += " Lower the batch size or cutoff_len, use LoRA with quantization_bit 4, or use a smaller model."
    raise WorkbenchError(message)


def loaded_model_bytes(model) -> int:
    """Memory held by a loaded model's parameters and buffers."""
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total
