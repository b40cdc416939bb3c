"""Options of ``export`` (merge adapters into a standalone model) and ``merge-adapters`` (combine
several adapters into one new adapter). Declared once; the CLI flags and the Export tab come from here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from workbench.config.base import OptionError, Options, option

EXPORT_DTYPES = ("auto", "bfloat16", "float16", "float32")
EXPORT_FORMATS = ("safetensors", "gguf")
# GGUF tensor types of the weights (1-D tensors such as norms always stay f32, as llama.cpp keeps them).
GGUF_QUANTS = ("f16", "bf16", "q8_0", "f32")
DEFAULT_SHARD_SIZE = "2GB"
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}

# PEFT ``add_weighted_adapter`` combination types offered here.
MERGE_METHODS = ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties")
# Methods that combine the A and B matrices entry by entry need every adapter to have the same rank.
SAME_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties")
# Methods that prune (keep a fraction ``density`` of) each adapter's values before combining.
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties")
DEFAULT_DENSITY = 0.5

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``"2GB"`` → 2_000_000_000 bytes (a bare number means bytes; KiB/MiB/GiB are powers of two)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size such as 2GB, 500MB or 1GiB")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "B").upper()])


@dataclass
class OutputOptions(Options):
    """Where a merge writes, shared by both commands."""

    out: str | None = option(
        None,
        "Output directory, or the .gguf file for format gguf (default: new under the Workbench home: exports/ for "
        "models and GGUF files, runs/ for adapters)",
        label="Output folder (or .gguf file)", label_zh="输出目录",
        help_zh="输出目录；format 为 gguf 时为 .gguf 文件（默认：在 Workbench 主目录下新建，模型和 GGUF 文件放在 exports/，"
                "适配器放在 runs/）",
    )
    overwrite: bool = option(
        False, "Replace an earlier export in the output directory (a directory holding other files is never replaced)",
        label="Replace an earlier export", label_zh="覆盖已有输出",
        help_zh="替换输出目录中之前导出的结果（含有其他文件的目录绝不会被替换）",
    )
    check_base: bool = option(
        True,
        "Refuse adapters whose recorded base model is not this model (turn off if the base model moved to another directory)",
        group="advanced", label="Check the base model", label_zh="检查基座模型",
        help_zh="适配器记录的基座模型不是当前模型时拒绝加载（基座模型移到了别的目录时请关闭此项）",
    )


@dataclass
class ExportArgs(OutputOptions):
    """``python -m workbench export``: merge adapter(s) into the base model and save a standalone model, as a
    safetensors directory or one GGUF file; or write one adapter alone as a GGUF LoRA adapter."""

    format: str = option(
        "safetensors",
        "safetensors: a model directory (transformers, vLLM, Workbench's model picker); gguf: one .gguf file for "
        "llama.cpp, Ollama and LM Studio (Llama, Mistral and Qwen2 models)",
        choices=EXPORT_FORMATS,
        label="Format", label_zh="格式",
        help_zh="safetensors：模型目录（transformers、vLLM、Workbench 的模型选择）；gguf：单个 .gguf 文件，"
                "供 llama.cpp、Ollama 和 LM Studio 使用（Llama、Mistral 和 Qwen2 模型）",
    )
    quant: str = option(
        "f16",
        "GGUF only: type of the weights: f16, bf16, q8_0 (8-bit, about half the size of f16) or f32 "
        "(norms stay f32)",
        choices=GGUF_QUANTS,
        label="GGUF weight type", label_zh="GGUF 量化",
        help_zh="仅 GGUF：权重的类型：f16、bf16、q8_0（8 位，约为 f16 的一半大小）或 f32（归一化层保持 f32）",
    )
    adapter_only: bool = option(
        False,
        "GGUF only: write the adapter alone as a GGUF LoRA adapter (llama.cpp --lora, Ollama ADAPTER) to use with "
        "the base model's GGUF, instead of merging it into the model",
        label="Adapter only", label_zh="仅导出适配器",
        help_zh="仅 GGUF：只把适配器写成 GGUF LoRA 适配器（llama.cpp --lora、Ollama ADAPTER），与基座模型的 GGUF "
                "一起使用，而不是合并进模型",
    )
    dtype: str = option(
        "auto",
        "Dtype of the merged weights: auto keeps the base model's own dtype; bf16/fp16/fp32 are accepted too "
        "(a GGUF is then written as quant says)",
        choices=EXPORT_DTYPES + tuple(DTYPE_ALIASES),
        label="Merged weights precision", label_zh="保存精度",
        help_zh="合并后权重的数据类型：auto 沿用基座模型自身的类型；也可填 bf16/fp16/fp32（GGUF 随后按 quant 写出）",
    )
    shard_size: str = option(
        DEFAULT_SHARD_SIZE,
        "Largest safetensors shard, e.g. 2GB, 500MB or 1GiB (a tensor larger than this gets its own shard)",
        label="Shard size", label_zh="分片大小",
        help_zh="safetensors 单个分片的最大大小，如 2GB、500MB 或 1GiB（超过此大小的张量单独成一个分片）",
    )

    def validate(self) -> None:
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        try:
            size = parse_size(self.shard_size)
        except ValueError as exc:
            raise OptionError("shard_size", str(exc)) from None
        if size < 1_000_000:
            raise OptionError("shard_size", f"{self.shard_size} is below the minimum of 1MB")
        if self.format != "gguf":
            if self.quant != "f16":
                raise OptionError("quant", "applies to --format gguf only (a safetensors export keeps dtype)")
            if self.adapter_only:
                raise OptionError("adapter_only", "applies to --format gguf only (in safetensors the adapter directory "
                                                  "is already the adapter alone)")
            return
        if self.shard_size != DEFAULT_SHARD_SIZE:
            raise OptionError("shard_size", "applies to safetensors only: a GGUF export is one file")
        if self.adapter_only and self.dtype != "auto":
            raise OptionError("dtype", "has no effect with adapter_only (nothing is merged; quant sets the type of "
                                       "the adapter's tensors)")
        if self.out and not str(self.out).lower().endswith(".gguf"):
            raise OptionError("out", f"{self.out}: a GGUF export is one file; give a path ending in .gguf")

    @property
    def is_gguf(self) -> bool:
        return self.format == "gguf"

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size)


@dataclass
class MergeAdaptersArgs(OutputOptions):
    """``python -m workbench merge-adapters``: combine several LoRA adapters into one new adapter (PEFT format)."""

    method: str = option(
        "cat",
        "How to combine: cat (exact weighted sum, rank = sum of ranks, any ranks), svd (weighted sum compressed to "
        "svd_rank, any ranks), linear / ties / dare_linear / dare_ties (combine A and B separately: approximate, "
        "equal ranks needed; ties/dare prune to density first)",
        choices=MERGE_METHODS,
        label="Combination method", label_zh="合并方法",
        help_zh="合并方式：cat（精确加权求和，秩为各秩之和，秩可不同）；svd（加权求和后压缩到 svd_rank，秩可不同）；"
                "linear / ties / dare_linear / dare_ties（分别合并 A 和 B 矩阵，结果为近似，要求秩相同；"
                "ties/dare 先按 density 剪枝）",
    )
    weights: str | None = option(
        None, "Comma-separated weight per adapter, in the order given (default: 1 for each)",
        label="Weights", label_zh="权重",
        help_zh="每个适配器的权重，逗号分隔，顺序与给出的适配器一致（默认：均为 1）",
    )
    density: float | None = option(
        None,
        f"Fraction of values kept per adapter by ties, dare_linear and dare_ties, in (0, 1] (default {DEFAULT_DENSITY})",
        min=0.0, max=1.0, label="Density", label_zh="密度",
        help_zh=f"ties、dare_linear 和 dare_ties 中每个适配器保留的数值比例，取值范围 (0, 1]（默认 {DEFAULT_DENSITY}）",
    )
    svd_rank: int | None = option(
        None, "Rank of the svd result (default: the largest input rank)", min=1, group="advanced",
        label="SVD rank", label_zh="SVD 秩",
        help_zh="svd 合并结果的秩（默认：输入适配器中最大的秩）",
    )

    def validate(self) -> None:
        if self.weights is not None:
            self.weight_list()  # raises OptionError for a bad number
        if self.density is not None:
            if self.method not in DENSITY_METHODS:
                raise OptionError("density", f"applies only to {', '.join(DENSITY_METHODS)}, not to method {self.method}")
            if not 0.0 < self.density <= 1.0:
                raise OptionError("density", f"{self.density} is out of range: use a value above 0 and at most 1")
        if self.svd_rank is not None and self.method != "svd":
            raise OptionError("svd_rank", f"applies only to method svd, not to {self.method}")

    def weight_list(self, count: int | None = None) -> list[float]:
        """The weights as floats; with ``count``, checked against the number of adapters."""
        if self.weights is None:
            return [1.0] * (count or 0)
        items = [w.strip() for w in str(self.weights).split(",")]
        values = []
        for position, item in enumerate(items, 1):
            try:
                values.append(float(item))
            except ValueError:
                raise OptionError("weights", f"weight {position} ({item!r}) is not a number") from None
            if not math.isfinite(values[-1]):
                raise OptionError("weights", f"weight {position} ({item!r}) is not a finite number")
        if count is not None and len(values) != count:
            raise OptionError("weights", f"{len(values)} weight(s) given for {count} adapter(s); give one per adapter")
        return values

    @property
    def effective_density(self) -> float | None:
        if self.method not in DENSITY_METHODS:
            return None
        return self.density if self.density is not None else DEFAULT_DENSITY
