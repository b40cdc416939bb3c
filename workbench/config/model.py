"""Options that pick and load a model: shared by train, chat, eval and export."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config.base import OptionError, Options, option

DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")


@dataclass
class ModelArgs(Options):
    model_name_or_path: str = option(
        "smollm2-135m-instruct",
        "Model alias from the registry, a local model directory, or a Hugging Face hub id",
        label_zh="模型",
        help_zh="注册表中的模型别名、本地模型目录或 Hugging Face Hub 上的模型 ID",
    )
    adapter_name_or_path: str | None = option(
        None,
        "Comma-separated adapter directories (or NAME=DIR) to attach unmerged",
        group="adapters",
        label_zh="适配器",
        help_zh="逗号分隔的适配器目录（或 NAME=DIR），以不合并的方式挂载",
    )
    infer_dtype: str = option(
        "auto",
        "Weights dtype: auto picks bfloat16 on GPUs that support it, float32 on CPU",
        choices=DTYPES,
        label_zh="数据类型",
        help_zh="权重的数据类型：auto 在支持 bfloat16 的 GPU 上用 bfloat16，在 CPU 上用 float32",
    )
    quantization_bit: int | None = option(
        None,
        "Load the base model quantized with bitsandbytes: 4 (NF4/FP4) or 8 bits; empty for none",
        choices=(4, 8),
        group="quantization",
        label_zh="量化位数",
        help_zh="用 bitsandbytes 量化加载基座模型：4 比特（NF4/FP4）或 8 比特；留空表示不量化",
    )
    quantization_type: str = option(
        "nf4", "4-bit data type", choices=("nf4", "fp4"), group="quantization", label_zh="4 比特类型",
        help_zh="4 比特量化的数据类型"
    )
    double_quantization: bool = option(
        True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param)", group="quantization",
        label_zh="双重量化",
        help_zh="对 4 比特量化常数再做一次量化（每个参数约省 0.4 比特）",
    )
    attn_implementation: str = option(
        "auto", "Attention kernel: auto (sdpa when available), eager, sdpa, flash_attention_2",
        choices=ATTENTION, group="advanced", label_zh="注意力实现",
        help_zh="注意力实现：auto（可用时用 sdpa）、eager、sdpa、flash_attention_2",
    )
    device: str = option(
        "auto", "Device: auto (cuda when present, else cpu), cpu, cuda, cuda:N", group="advanced",
        label_zh="设备",
        help_zh="运行设备：auto（有 CUDA 时用 cuda，否则用 cpu）、cpu、cuda、cuda:N",
    )
    trust_remote_code: bool = option(
        False, "Allow model repositories to run their own Python code", group="advanced",
        label_zh="信任远程代码",
        help_zh="允许模型仓库运行其自带的 Python 代码",
    )

    def validate(self) -> None:
        if not self.model_name_or_path.strip():
            raise OptionError("model_name_or_path", "a model is required")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise OptionError("device", f"{self.device!r} is not auto, cpu, cuda, cuda:N or mps")

    def adapter_map(self) -> dict[str, str]:
        """Adapters as {name: dir}; unnamed ones are named after their directory."""
        from workbench.models.adapters import parse_adapter_specs

        return parse_adapter_specs(self.adapter_name_or_path)
