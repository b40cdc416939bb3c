"""Options that pick and load a model: shared by train, chat, eval and export."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from workbench.config.base import Alias, OptionError, Options, WorkbenchError, option

DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")
ENGINES = ("transformers", "vllm")


@dataclass
class ModelArgs(Options):
    # LLaMA-Factory's name for the engine (its "huggingface" is our transformers engine).
    ALIASES = {
        "infer_backend": Alias("engine", "LLaMA-Factory's name for engine (huggingface = transformers)",
                               convert=lambda v: "transformers" if str(v).lower() in ("huggingface", "hf") else v),
    }

    model_name_or_path: str = option(
        "smollm2-135m-instruct",
        "Model alias from the registry, a local model directory, or a Hugging Face hub id",
        label="Model", label_zh="模型",
        help_zh="注册表中的模型别名、本地模型目录或 Hugging Face Hub 上的模型 ID",
    )
    adapter_name_or_path: str | None = option(
        None,
        "Comma-separated adapter directories (or NAME=DIR) to attach unmerged",
        group="adapters",
        label="Adapters", label_zh="适配器",
        help_zh="逗号分隔的适配器目录（或 NAME=DIR），以不合并的方式挂载",
    )
    infer_dtype: str = option(
        "auto",
        "Weights dtype: auto picks bfloat16 on GPUs that support it; on a CPU bfloat16 for chat/API/evaluation where "
        "the CPU has native bf16 (AVX512-BF16, AMX), else float32 (training, merging, exporting on a CPU: float32)",
        choices=DTYPES,
        label="Weights precision", label_zh="数据类型",
        help_zh="权重的数据类型：auto 在支持 bfloat16 的 GPU 上用 bfloat16；在 CPU 上，对话/API/评测在原生支持 bf16 的 CPU"
                "（AVX512-BF16、AMX）上用 bfloat16，否则用 float32（CPU 上训练用 float32）",
    )
    quantization_bit: int | None = option(
        None,
        "Load the base model quantized with bitsandbytes: 4 (NF4/FP4) or 8 bits; empty for none",
        choices=(4, 8),
        group="quantization",
        label="Quantization bits", label_zh="量化位数",
        help_zh="用 bitsandbytes 量化加载基座模型：4 比特（NF4/FP4）或 8 比特；留空表示不量化",
    )
    quantization_type: str = option(
        "nf4", "4-bit data type", choices=("nf4", "fp4"), group="quantization", label="4-bit type", label_zh="4 比特类型",
        help_zh="4 比特量化的数据类型"
    )
    double_quantization: bool = option(
        True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param)", group="quantization",
        label="Double quantization", label_zh="双重量化",
        help_zh="对 4 比特量化常数再做一次量化（每个参数约省 0.4 比特）",
    )
    attn_implementation: str = option(
        "auto", "Attention kernel: auto (sdpa when available), eager, sdpa, flash_attention_2",
        choices=ATTENTION, group="advanced", label="Attention kernel", label_zh="注意力实现",
        help_zh="注意力实现：auto（可用时用 sdpa）、eager、sdpa、flash_attention_2",
    )
    device: str = option(
        "auto", "Device: auto (cuda when present, else cpu), cpu, cuda, cuda:N", group="advanced",
        label="Device", label_zh="设备",
        help_zh="运行设备：auto（有 CUDA 时用 cuda，否则用 cpu）、cpu、cuda、cuda:N",
    )
    engine: str = option(
        "transformers",
        "Generation engine for chat, the API and evaluation: transformers (ours: continuous batching, any device) or "
        "vllm (CUDA GPUs only; install with `make extras EXTRAS=vllm`)",
        choices=ENGINES, group="advanced", label="Generation engine", label_zh="生成引擎",
        help_zh="对话、API 与评测使用的生成引擎：transformers（内置，连续批处理，任意设备）或 vllm（仅限 CUDA GPU；"
                "用 `make extras EXTRAS=vllm` 安装）",
    )
    trust_remote_code: bool = option(
        False, "Allow model repositories to run their own Python code", group="advanced",
        label="Trust remote code", label_zh="信任远程代码",
        help_zh="允许模型仓库运行其自带的 Python 代码",
    )

    def validate(self) -> None:
        if not self.model_name_or_path.strip():
            raise OptionError("model_name_or_path", "a model is required")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise OptionError("device", f"{self.device!r} is not auto, cpu, cuda, cuda:N or mps")

    def adapter_map(self) -> dict[str, str]:
        """Adapters as {name: dir}; unnamed ones are named after their directory."""
        return parse_adapter_specs(self.adapter_name_or_path)


# ---- adapters: NAME=DIR ------------------------------------------------------------------------------

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def adapter_name_for(path: str | Path) -> str:
    name = Path(str(path).rstrip("/")).name or "adapter"
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def parse_adapter_specs(specs: str | list[str] | None) -> dict[str, str]:
    """``"a=/x,b=/y"`` or ``["/x", "b=/y"]`` → ``{"a": "/x", "b": "/y"}``; names must be unique."""
    if not specs:
        return {}
    items = specs.split(",") if isinstance(specs, str) else [s for spec in specs for s in spec.split(",")]
    out: dict[str, str] = {}
    for item in (s.strip() for s in items):
        if not item:
            continue
        if "=" in item:
            name, path = (part.strip() for part in item.split("=", 1))
        else:
            name, path = adapter_name_for(item), item
        if not _ADAPTER_NAME.match(name) or name == "base":
            raise WorkbenchError(f"adapter name {name!r} is not allowed (letters, digits, '_', '-', '.'; not 'base')")
        if name in out:
            raise WorkbenchError(f"two adapters are named {name!r}; name them with NAME=DIR")
        out[name] = path
    return out


# ---- the flags of the commands that load a model -----------------------------------------------------

TEMPLATE_FLAG_HELP = "chat template (default auto: the model's registry default, else the tokenizer's own)"


def add_model_flags(parser: argparse.ArgumentParser, *, adapter_help: str | None = None,
                    adapter_metavar: str = "NAME=DIR", template: bool = False, underscore_names: bool = False,
                    model_dest: str = "model_name_or_path",
                    model_help: str = "model alias, local directory or hub id") -> None:
    """``--model`` (and ``--adapter``, ``--template``) as chat, api, eval, export, merge-adapters and data
    preview spell them.

    ``--model`` into ``model_name_or_path`` stays unset unless typed, so the ModelArgs default (or a YAML value)
    applies; a command that reads another dest itself (data preview's ``model``) gets the default as a value.
    ``--adapter`` (repeatable) collects NAME=DIR specs into ``adapter`` for :func:`parse_adapter_specs`, with
    ``adapter_help`` saying what the command does with them; None leaves the flag out. ``underscore_names``
    also accepts ``--model_name_or_path`` / ``--adapter_name_or_path`` (eval).
    """
    default_model = ModelArgs.__dataclass_fields__["model_name_or_path"].default
    flags = ("--model", "--model_name_or_path") if underscore_names else ("--model",)
    default = argparse.SUPPRESS if model_dest == "model_name_or_path" else default_model
    parser.add_argument(*flags, dest=model_dest, default=default, metavar="MODEL" if underscore_names else None,
                        help=f"{model_help} (default: {default_model})")
    if adapter_help is not None:
        flags = ("--adapter", "--adapter_name_or_path") if underscore_names else ("--adapter",)
        parser.add_argument(*flags, dest="adapter", action="append", default=[], metavar=adapter_metavar,
                            help=adapter_help)
    if template:
        parser.add_argument("--template", default="auto", help=TEMPLATE_FLAG_HELP)
