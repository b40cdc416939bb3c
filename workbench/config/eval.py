"""Options of ``python -m workbench eval``: which tasks, how many examples, how generation is batched.

The model and adapters come from :class:`~workbench.config.model.ModelArgs`; sampling from
:class:`~workbench.config.generation.GenerationArgs` (greedy by default, which is what scores should use).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config.base import OptionError, Options, option

BUILTIN_TASKS = ("translation", "summarization", "qa")


@dataclass
class EvalArgs(Options):
    task: str = option(
        "translation,summarization,qa",
        "Comma-separated tasks, each NAME or NAME=DATASET (a dataset_info.json name, a data file, a SQuAD json, "
        "or line-aligned SRC+TGT files for translation). Built in: translation (BLEU), summarization (ROUGE-1), "
        "qa (EM)",
        label_zh="评测任务",
    )
    metric: str | None = option(
        None,
        "Comma-separated TASK=METRIC overrides or metrics of your own tasks: bleu, rouge1, rouge2, rougeL, em, f1",
        group="advanced", label_zh="评测指标",
    )
    max_samples: int | None = option(
        None, "Evaluate at most this many examples per task (the first ones; empty: all)", min=1,
        label_zh="最大样本数",
    )
    batch_size: int = option(
        8, "Rows per generate call; each row is one example under one model (base or an adapter)", min=1,
        max=4096, label_zh="批大小",
    )
    max_new_tokens: int | None = option(
        None, "Most tokens per answer (empty: the task's default: translation 128, summarization 128, qa 32)",
        min=1, max=32768, label_zh="最大生成长度",
    )
    max_prompt_len: int | None = option(
        None, "Cut the end of longer prompts' last message so the prompt fits this many tokens (empty: no limit)",
        min=16, group="advanced", label_zh="提示词最大长度",
    )
    include_base: bool = option(
        True, "Also evaluate the base model without adapters", label_zh="评测基座模型",
    )
    merged: str | None = option(
        None, "Comma-separated NAME=DIR merged (standalone) models, evaluated after the base and adapters",
        group="models", label_zh="合并后的模型",
    )
    template: str = option(
        "auto", "Chat template for the prompts (auto: the model's registry default, else the tokenizer's own)",
        label_zh="对话模板",
    )
    dataset_dir: str | None = option(
        None, "Directory with dataset_info.json (empty: the project's data/)", group="advanced",
        label_zh="数据目录",
    )
    output_dir: str | None = option(
        None, "Where predictions, results.json and the matrix are written (empty: a new run under the runs "
        "directory)", label_zh="输出目录",
    )
    no_answer_phrase: str = option(
        "unanswerable", "For QA: an answer equal to this phrase counts as 'no answer' (SQuAD v2.0 empty answer)",
        group="advanced", label_zh="无答案短语",
    )
    rouge_cjk: str = option(
        "char", "How ROUGE tokenizes Chinese/Japanese/Korean text: one token per character, or jieba words",
        choices=("char", "jieba"), group="advanced", label_zh="中文 ROUGE 分词",
    )
    bleu_tokenize: str = option(
        "auto", "sacreBLEU tokenizer: auto (zh for Chinese targets, else 13a), 13a, zh, intl, char",
        choices=("auto", "13a", "zh", "intl", "char"), group="advanced", label_zh="BLEU 分词",
    )

    def validate(self) -> None:
        if not self.task or not self.task.strip(" ,"):
            raise OptionError("task", "name at least one task (translation, summarization, qa or NAME=DATASET)")
