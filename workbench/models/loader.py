"""One loader for train, chat, eval and export: resolve the model, pick dtype and device, quantize
with bitsandbytes, and attach any number of named PEFT adapters unmerged."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError
from workbench.config.model import ModelArgs
from workbench.machine import cpu_has_native_bf16
from workbench.models import registry
from workbench.models.adapters import check_adapter_finite, check_adapter_fits, read_adapter_config
from workbench.models.bundled import ensure_converted


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name and Path(name).expanduser().exists()


def check_model_dir(path: Path) -> None:
    """A usable local model directory: config.json plus readable weights."""
    if not path.is_dir():
        raise WorkbenchError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise WorkbenchError(f"{path} is not a model directory: config.json is missing")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        if any(path.glob("*.bin")):
            return  # legacy .bin weights; transformers loads them with weights_only=True
        raise WorkbenchError(f"{path}: no model weights found (expected *.safetensors)")
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                f.keys()
        except Exception as exc:  # corrupt header or truncated file
            raise WorkbenchError(f"{shard}: corrupt safetensors file ({exc})") from None


def resolve_model_path(name_or_path: str) -> str:
    """Alias, local directory or hub id → something ``from_pretrained`` can load offline if possible."""
    name = name_or_path.strip()
    local = Path(name).expanduser()
    if local.is_dir() or _looks_like_path(name):
        check_model_dir(local)
        return str(local.resolve())
    info = registry.lookup(name)
    if info is not None and info.bundled:
        return str(ensure_converted())
    if info is None and "/" not in name:
        known = ", ".join(registry.MODELS)
        raise WorkbenchError(
            f"unknown model {name!r}: not a registry alias ({known}), not a local directory, and not a hub id (owner/name)"
        )
    hub_id = info.hub_id if info else name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise WorkbenchError(
            f"model {hub_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it on a connected machine or pass a local model directory"
        )
    try:
        return snapshot_download(
            hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        )
    except Exception as exc:
        raise WorkbenchError(
            f"could not download model {hub_id} ({type(exc).__name__}); offline? pass a local model directory instead"
        ) from None


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise WorkbenchError(f"device {requested!r} was asked for but no CUDA GPU is available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(requested: str, device: str, *, inference: bool = False):
    """``auto``: bf16 (else fp16) on CUDA; on a CPU, bf16 for inference where the CPU has native bf16 (decoding
    reads every weight per token, so half the bytes is nearly twice the speed, and batched rows cost ~nothing
    more), else float32 (training, merging and exporting on a CPU: float32)."""
    import torch

    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if inference and device == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]


def quantization_config(args: ModelArgs, compute_dtype):
    if not args.quantization_bit:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:
        raise WorkbenchError(
            f"quantization_bit {args.quantization_bit} needs bitsandbytes, which cannot be used here ({exc})"
        ) from None
    if args.quantization_bit == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=args.quantization_type,
            bnb_4bit_use_double_quant=args.double_quantization,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer(model_path: str, *, padding_side: str = "left", trust_remote_code: bool = False):
    """Left padding for batched generation, right padding for training; always a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_path: str
    label: str
    device: str
    dtype: Any
    quantization_bit: int | None
    adapters: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0
    scheduler: Any = field(default=None, repr=False, compare=False)  # infer.scheduler, started on first answer
    backend: Any = field(default=None, repr=False, compare=False)    # the vllm engine's server (model is None)

    @property
    def template(self) -> str:
        return registry.default_template(self.label)

    def describe(self) -> str:
        quant = f", {self.quantization_bit}-bit" if self.quantization_bit else ""
        names = f", adapters: {', '.join(self.adapters)}" if self.adapters else ""
        engine = ", vllm engine" if self.backend is not None else ""
        return f"{self.label} on {self.device} ({str(self.dtype).replace('torch.', '')}{quant}{engine}{names})"


def load_model(
    args: ModelArgs,
    *,
    adapters: dict[str, str] | None = None,
    padding_side: str = "left",
    for_training: bool = False,
    generation: bool = False,
) -> LoadedModel:
    """Load base model + tokenizer (+ quantization, + adapters attached unmerged and named). ``generation``: for
    chat, the API or evaluation (``auto`` may then pick bf16 on a CPU, see :func:`pick_dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model_path = resolve_model_path(args.model_name_or_path)
    device = pick_device(args.device)
    dtype = pick_dtype(args.infer_dtype, device, inference=generation)
    quant = quantization_config(args, dtype)
    tokenizer = load_tokenizer(model_path, padding_side=padding_side, trust_remote_code=args.trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": args.trust_remote_code}
    if args.attn_implementation != "auto":
        kwargs["attn_implementation"] = args.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except ImportError as exc:
        raise WorkbenchError(f"cannot load {args.model_name_or_path} with these options: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        if quant is not None:
            raise WorkbenchError(
                f"quantization_bit {args.quantization_bit} is not supported on {device} here: {exc}"
            ) from None
        raise WorkbenchError(f"cannot load {args.model_name_or_path}: {exc}") from None
    if quant is None:
        model.to(device)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.train(for_training)
    adapters = dict(adapters if adapters is not None else args.adapter_map())
    if adapters:
        model = attach_adapters(model, adapters, base_label=args.model_name_or_path, is_trainable=for_training)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_path=model_path,
        label=args.model_name_or_path,
        device=device,
        dtype=dtype,
        quantization_bit=args.quantization_bit,
        adapters=adapters,
        load_seconds=time.perf_counter() - started,
    )


def attach_adapters(model, adapters: dict[str, str], *, base_label: str, is_trainable: bool = False):
    """Attach adapters under their names, unmerged; each is checked against the base first."""
    from peft import PeftModel

    for name, path in adapters.items():
        read_adapter_config(path)
        check_adapter_fits(model, path, base_label)
        check_adapter_finite(path, name)
    peft_model = model if isinstance(model, PeftModel) else None
    for name, path in adapters.items():
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=is_trainable)
            else:
                peft_model.load_adapter(path, adapter_name=name, is_trainable=is_trainable)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise WorkbenchError(f"cannot attach adapter {name} from {path}: {exc}") from None
    if peft_model is not None and not is_trainable:
        peft_model.eval()
    return peft_model


def adapter_base_model(path: str | Path) -> str | None:
    try:
        return read_adapter_config(path).get("base_model_name_or_path")
    except WorkbenchError:
        return None


def model_summary(path: str) -> dict:
    config = json.loads((Path(path) / "config.json").read_text())
    return {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
