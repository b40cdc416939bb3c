"""Options of ``export`` (merge adapters into a standalone model) and ``merge-adapters`` (combine
several adapters into one new adapter). Declared once; the CLI flags and the Export tab come from here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from workbench.config.base import OptionError, Options, option

EXPORT_DTYPES = ("auto", "bfloat16", "float16", "float32")
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
        "Output directory (default: a new directory under the Workbench home: exports/ for models, runs/ for adapters)",
        label_zh="输出目录",
        help_zh="输出目录（默认：在 Workbench 主目录下新建，模型放在 exports/，适配器放在 runs/）",
    )
    overwrite: bool = option(
        False, "Replace an earlier export in the output directory (a directory holding other files is never replaced)",
        label_zh="覆盖已有输出",
        help_zh="替换输出目录中之前导出的结果（含有其他文件的目录绝不会被替换）",
    )
    check_base: bool = option(
        True,
        "Refuse adapters whose recorded base model is not this model (turn off if the base model moved to another directory)",
        group="advanced", label_zh="检查基座模型",
        help_zh="适配器记录的基座模型不是当前模型时拒绝加载（基座模型移到了别的目录时请关闭此项）",
    )


@dataclass
class ExportArgs(OutputOptions):
    """``python -m workbench export``: merge adapter(s) into the base model and save a standalone model."""

    dtype: str = option(
        "auto",
        "Dtype of the saved weights: auto keeps the base model's own dtype; bf16/fp16/fp32 are accepted too",
        choices=EXPORT_DTYPES + tuple(DTYPE_ALIASES),
        label_zh="保存精度",
        help_zh="保存权重的数据类型：auto 沿用基座模型自身的类型；也可填 bf16/fp16/fp32",
    )
    shard_size: str = option(
        "2GB", "Largest safetensors shard, e.g. 2GB, 500MB or 1GiB (a tensor larger than this gets its own shard)",
        label_zh="分片大小",
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
        label_zh="合并方法",
        help_zh="合并方式：cat（精确加权求和，秩为各秩之和，秩可不同）；svd（加权求和后压缩到 svd_rank，秩可不同）；"
                "linear / ties / dare_linear / dare_ties（分别合并 A 和 B 矩阵，结果为近似，要求秩相同；"
                "ties/dare 先按 density 剪枝）",
    )
    weights: str | None = option(
        None, "Comma-separated weight per adapter, in the order given (default: 1 for each)", label_zh="权重",
        help_zh="每个适配器的权重，逗号分隔，顺序与给出的适配器一致（默认：均为 1）",
    )
    density: float | None = option(
        None,
        f"Fraction of values kept per adapter by ties, dare_linear and dare_ties, in (0, 1] (default {DEFAULT_DENSITY})",
        min=0.0, max=1.0, label_zh="密度",
        help_zh=f"ties、dare_linear 和 dare_ties 中每个适配器保留的数值比例，取值范围 (0, 1]（默认 {DEFAULT_DENSITY}）",
    )
    svd_rank: int | None = option(
        None, "Rank of the svd result (default: the largest input rank)", min=1, group="advanced",
        label_zh="SVD 秩",
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
