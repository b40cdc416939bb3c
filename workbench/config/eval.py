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
        label="Tasks", label_zh="评测任务",
        help_zh="逗号分隔的评测任务，每项为 NAME 或 NAME=DATASET（dataset_info.json 中的名称、数据文件、SQuAD json，"
                "翻译任务还可用逐行对齐的 源+目标 文件）。"
                "内置任务：translation（BLEU）、summarization（ROUGE-1）、qa（EM）",
    )
    metric: str | None = option(
        None,
        "Comma-separated TASK=METRIC overrides or metrics of your own tasks: bleu, rouge1, rouge2, rougeL, em, f1",
        group="advanced", label="Metrics", label_zh="评测指标",
        help_zh="逗号分隔的 TASK=METRIC，用于覆盖内置任务的指标或给自定义任务指定指标："
                "bleu、rouge1、rouge2、rougeL、em、f1",
    )
    max_samples: int | None = option(
        None, "Evaluate at most this many examples per task (the first ones; empty: all)", min=1,
        label="Max examples per task", label_zh="最大样本数",
        help_zh="每个任务最多评测的样本数（取最前面的样本；留空：全部）",
    )
    batch_size: int = option(
        8, "Rows per generate call; each row is one example under one model (base or an adapter)", min=1,
        max=4096, label="Batch size (rows)", label_zh="批大小",
        help_zh="每次 generate 调用处理的行数；每行对应一个样本在一个模型（基座模型或某个适配器）上的生成",
    )
    max_new_tokens: int | None = option(
        None, "Most tokens per answer (empty: the task's default: translation 128, summarization 128, qa 32)",
        min=1, max=32768, label="Max new tokens", label_zh="最大生成长度",
        help_zh="每个回答的最大 token 数（留空：任务默认值，translation 128、summarization 128、qa 32）",
    )
    max_prompt_len: int | None = option(
        None, "Cut the end of longer prompts' last message so the prompt fits this many tokens (empty: no limit)",
        min=16, group="advanced", label="Max prompt length", label_zh="提示词最大长度",
        help_zh="提示词超过此 token 数时，截掉最后一条消息的末尾使其放得下（留空：不限制）",
    )
    include_base: bool = option(
        True, "Also evaluate the base model without adapters", label="Evaluate the base model", label_zh="评测基座模型",
        help_zh="同时评测不加适配器的基座模型",
    )
    merged: str | None = option(
        None, "Comma-separated NAME=DIR merged (standalone) models, evaluated after the base and adapters",
        group="models", label="Merged models", label_zh="合并后的模型",
        help_zh="逗号分隔的 NAME=DIR，指定已合并的（独立）模型，在基座模型和适配器之后评测",
    )
    template: str = option(
        "auto", "Chat template for the prompts (auto: the model's registry default, else the tokenizer's own)",
        label="Chat template", label_zh="对话模板",
        help_zh="构造提示词所用的对话模板（auto：模型在注册表中的默认模板，没有则用分词器自带的）",
    )
    dataset_dir: str | None = option(
        None, "Folder with dataset_info.json (empty: data/ in the Workbench home; the built-in tasks' demo sets are "
        "read from the project's data/ when this folder does not register them)", group="advanced",
        label="Dataset folder", label_zh="数据目录",
        help_zh="包含 dataset_info.json 的目录（留空：Workbench 主目录下的 data/；该目录未注册内置任务的示例数据集时，"
                "从项目的 data/ 读取）",
    )
    output_dir: str | None = option(
        None, "Where predictions, results.json and the matrix are written (empty: a new run under the runs "
        "directory)", label="Output folder", label_zh="输出目录",
        help_zh="预测结果、results.json 和结果矩阵的写入位置（留空：在 runs 目录下新建一个运行）",
    )
    no_answer_phrase: str = option(
        "unanswerable", "For QA: an answer equal to this phrase counts as 'no answer' (SQuAD v2.0 empty answer)",
        group="advanced", label="No-answer phrase", label_zh="无答案短语",
        help_zh="问答任务：回答与此短语相同即视为“无答案”（对应 SQuAD v2.0 的空答案）",
    )
    rouge_cjk: str = option(
        "char", "How ROUGE tokenizes Chinese/Japanese/Korean text: one token per character, or jieba words",
        choices=("char", "jieba"), group="advanced", label="Chinese ROUGE tokens", label_zh="中文 ROUGE 分词",
        help_zh="ROUGE 如何切分中日韩文本：char 按单字切分，jieba 按 jieba 分词切分",
    )
    bleu_tokenize: str = option(
        "auto", "sacreBLEU tokenizer: auto (zh for Chinese targets, else 13a), 13a, zh, intl, char",
        choices=("auto", "13a", "zh", "intl", "char"), group="advanced", label="BLEU tokenizer", label_zh="BLEU 分词",
        help_zh="sacreBLEU 分词器：auto（参考译文为中文时用 zh，否则用 13a）、13a、zh、intl、char",
    )

    def validate(self) -> None:
        if not self.task or not self.task.strip(" ,"):
            raise OptionError("task", "name at least one task (translation, summarization, qa or NAME=DATASET)")
