"""Sampling options for chat and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config.base import OptionError, Options, option


@dataclass
class GenerationArgs(Options):
    max_new_tokens: int = option(256, "Most tokens to generate per answer", min=1, max=32768,
                                 label="Max new tokens", label_zh="最大生成长度",
                                 help_zh="每个回答最多生成的 token 数")
    do_sample: bool = option(False, "Sample instead of greedy decoding", label="Sample", label_zh="采样",
                             help_zh="使用采样而不是贪心解码")
    temperature: float = option(0.7, "Sampling temperature (with do_sample)", min=0.0, max=5.0,
                                label="Temperature", label_zh="温度",
                                help_zh="采样温度（开启 do_sample 时生效）")
    top_p: float = option(0.9, "Nucleus sampling probability mass (with do_sample)", min=0.0, max=1.0,
                          label="Top-p", label_zh="Top-p",
                          help_zh="核采样（nucleus sampling）的累积概率阈值（开启 do_sample 时生效）")
    top_k: int = option(50, "Sample from the k most likely tokens (0 = no limit)", min=0,
                        label="Top-k", label_zh="Top-k",
                        help_zh="只从概率最高的 k 个 token 中采样（0 表示不限制）")
    repetition_penalty: float = option(1.0, "Penalty for repeated tokens (1.0 = none)", min=0.5, max=3.0,
                                       label="Repetition penalty", label_zh="重复惩罚", help_zh="对重复 token 的惩罚（1.0 表示不惩罚）")
    seed: int | None = option(None, "Random seed for sampling; empty for a fresh one each time",
                              label="Seed", label_zh="随机种子",
                              help_zh="采样的随机种子；留空则每次随机")
    system: str | None = option(None, "System prompt (empty: the template's default)",
                                label="System prompt", label_zh="系统提示词",
                                help_zh="系统提示词（留空：使用模板的默认值）")

    def validate(self) -> None:
        if self.do_sample and self.temperature == 0.0:
            raise OptionError("temperature", "must be above 0 when do_sample is on (or turn do_sample off)")

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs
