"""Options that pick datasets and turn them into training examples (LLaMA-Factory's names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.config.base import Alias, OptionError, Options, option
from workbench.paths import default_dataset_dir

STAGES = ("pt", "sft", "rm", "dpo")  # training stages; each reads its own kind of rows


@dataclass
class DataArgs(Options):
    # Qwen's finetune.py names: its data files are data files here too (``dataset`` takes paths).
    ALIASES = {
        "model_max_length": Alias("cutoff_len", "Qwen finetune.py / tokenizer name for cutoff_len"),
        "data_path": Alias("dataset", "Qwen finetune.py: the training data file (json/jsonl; its format is detected)"),
        "eval_data_path": Alias("eval_dataset", "Qwen finetune.py: the evaluation data file"),
    }

    dataset: str | None = option(
        None,
        "Comma-separated dataset names from dataset_info.json (or paths to data files); each is loaded and "
        "the rows are combined into one training set",
        label="Datasets", label_zh="数据集",
        help_zh="逗号分隔的数据集名称（dataset_info.json 中的名称，或数据文件路径）；逐个加载后合并为一个训练集",
    )
    eval_dataset: str | None = option(
        None, "Comma-separated datasets used only for evaluation (instead of splitting off val_size)",
        group="eval", label="Evaluation datasets", label_zh="验证数据集",
        help_zh="仅用于验证的数据集，逗号分隔（代替按 val_size 从训练集中划分）",
    )
    dataset_dir: str | None = option(
        None, "Folder holding dataset_info.json and the data files (empty: data/ in the Workbench home, which starts "
        "with the demo sets; $WORKBENCH_DATA moves it)",
        label="Dataset folder", label_zh="数据目录",
        help_zh="存放 dataset_info.json 和数据文件的目录（留空：Workbench 主目录下的 data/，初始包含示例数据集；"
                "可用 $WORKBENCH_DATA 改到别处）",
    )
    template: str = option(
        "auto",
        "Chat template; auto = the model's registry default, else the tokenizer's own chat template",
        label="Chat template", label_zh="对话模板",
        help_zh="对话模板；auto 表示用模型在注册表中的默认模板，没有则用分词器自带的对话模板",
    )
    default_system: str | None = option(
        None, "System prompt for examples that have none (empty: the template's default)", group="template",
        label="Default system prompt", label_zh="默认系统提示词",
        help_zh="样本没有系统提示词时使用的系统提示词（留空：模板的默认值）",
    )
    cutoff_len: int = option(
        1024, "Most tokens per example after tokenisation; longer examples are truncated (the prompt is "
        "shortened before the response is lost)", min=8, max=1_048_576, label="Cutoff length (tokens)", label_zh="截断长度",
        help_zh="分词后每个样本的最大 token 数；超长样本会被截断（先截短提示词，尽量保留回答）",
    )
    max_samples: int | None = option(
        None, "Use at most this many rows of each dataset (read lazily: big files are not loaded whole)",
        min=1, label="Max rows per dataset", label_zh="最大样本数",
        help_zh="每个数据集最多使用的行数（按需读取，大文件不会整体载入）",
    )
    val_size: float = option(
        0.0, "Validation split: a fraction (0-1) of the rows, or a number of rows (>= 1)", min=0.0,
        group="eval", label="Validation split", label_zh="验证集比例",
        help_zh="验证集大小：0-1 之间的小数表示占总行数的比例，>= 1 的整数表示行数",
    )
    train_on_prompt: bool = option(
        False, "Also compute the loss on prompt tokens (default: only the assistant's answers)", group="template",
        label="Train on prompts too", label_zh="训练提示词",
        help_zh="提示词部分的 token 也计算损失（默认只对助手的回答计算）",
    )
    mask_history: bool = option(
        False, "Train only the last assistant turn of multi-turn conversations", group="template",
        label="Train the last turn only", label_zh="仅训练最后一轮",
        help_zh="多轮对话只训练助手的最后一轮回答",
    )
    packing: bool = option(
        False, "Pack several examples into each cutoff_len row (position ids restart per example, so no "
        "attention crosses examples)", group="advanced", label="Pack examples", label_zh="序列打包",
        help_zh="把多个样本打包进一条 cutoff_len 长的序列（每个样本的 position id 重新计数，注意力不会跨样本）",
    )
    streaming: bool = option(
        False, "Read and tokenise the data lazily while training (for data larger than memory; needs max_steps)",
        group="advanced", label="Stream the data", label_zh="流式读取",
        help_zh="训练时边读取边分词（适用于内存放不下的数据；需要设置 max_steps）",
    )
    buffer_size: int = option(
        16384, "Shuffle buffer (rows) when streaming", min=1, group="advanced",
        label="Shuffle buffer (rows)", label_zh="流式缓冲区",
        help_zh="流式读取时的打乱缓冲区大小（行数）",
    )
    preprocessing_num_workers: int | None = option(
        None, "Processes for tokenisation (empty: one process; the fast tokenizer already batches)", min=1,
        group="advanced", label="Tokenisation processes", label_zh="预处理进程数",
        help_zh="分词使用的进程数（留空：单进程；fast tokenizer 本身已按批处理）",
    )
    preprocessing_batch_size: int = option(
        1000, "Rows per tokenisation batch", min=1, group="advanced",
        label="Tokenisation batch (rows)", label_zh="预处理批大小",
        help_zh="分词时每批处理的行数",
    )
    overwrite_cache: bool = option(
        False, "Rebuild the tokenised dataset even if a cached copy exists", group="advanced",
        label="Rebuild the cache", label_zh="覆盖缓存",
        help_zh="即使已有缓存，也重新生成分词后的数据集",
    )
    seed: int = option(42, "Seed for the validation split and shuffling", group="advanced",
                       label="Data seed", label_zh="随机种子",
                       help_zh="划分验证集和打乱数据所用的随机种子")

    def validate(self) -> None:
        if self.val_size >= 1 and not float(self.val_size).is_integer():
            raise OptionError("val_size", f"{self.val_size}: use a fraction below 1 or a whole number of rows")
        if self.streaming and 0 < self.val_size < 1:
            raise OptionError("val_size", "with streaming, give a number of rows (>= 1), not a fraction")
        if self.streaming and self.packing:
            raise OptionError("packing", "packing needs the whole dataset; turn streaming off")

    def dataset_names(self) -> list[str]:
        return [n.strip() for n in (self.dataset or "").split(",") if n.strip()]

    def eval_dataset_names(self) -> list[str]:
        return [n.strip() for n in (self.eval_dataset or "").split(",") if n.strip()]

    def dataset_path(self) -> Path:
        return Path(self.dataset_dir).expanduser() if self.dataset_dir else default_dataset_dir()
