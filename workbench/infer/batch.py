"""Batched generation: many prompts, left-padded, in one ``generate`` call — and the base model and any
number of attached LoRA adapters in the *same* call.

PEFT (0.21) supports mixed adapter batches: ``PeftModel.generate(..., adapter_names=[...])`` takes
one adapter name per row (``"__base__"`` for the bare base model). During that call every LoRA layer
gets the list through a forward pre-hook and adds each adapter's ``B·A·x`` only to the rows that
named it (``LoraLayer._mixed_batch_forward``), so the base weights are shared and read once per
step for all variants. It needs the model in eval mode and unmerged adapters, which the loader
gives at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs

BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class BatchOutput:
    texts: list[str]
    token_ids: list[list[int]]  # generated ids, cut at the first stop token (which is not included)
    prompt_tokens: int  # real (unpadded) prompt tokens in the batch
    new_tokens: int  # generated tokens kept, summed over rows


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a requirement; be safe for plain models anyway
        return False
    return isinstance(model, PeftModel)


def peft_adapter_names(loaded, adapter_names: Sequence[str | None]) -> list[str] | None:
    """Our names (None/"base" or an attached adapter) → PEFT's per-row names; None when no PEFT model."""
    known = set(getattr(loaded, "adapters", {}) or {})
    if _is_peft(loaded.model):
        known |= set(getattr(loaded.model, "peft_config", {}) or {})
    names = []
    for name in adapter_names:
        if name in (None, BASE, PEFT_BASE):
            names.append(PEFT_BASE)
        elif name in known:
            names.append(name)
        else:
            attached = ", ".join(sorted(known)) or "none"
            raise WorkbenchError(f"adapter {name!r} is not attached to the loaded model (attached: {attached})")
    if not _is_peft(loaded.model):
        return None  # every row is the base model (checked above: no adapter names)
    return names


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int, device):
    """``input_ids`` and ``attention_mask`` tensors with every prompt right-aligned."""
    import torch

    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        if p:
            ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _cut(row: list[int], stops: set[int], pad_id: int | None) -> list[int]:
    for i, tok in enumerate(row):
        if tok in stops:
            return row[:i]
    # Rows that finished early are filled with pad by generate; pad is not text.
    while row and pad_id is not None and row[-1] == pad_id and pad_id not in stops:
        row = row[:-1]
    return row


def generate_batch_output(loaded, prompt_ids: Sequence[Sequence[int]], adapter_names: Sequence[str | None] | None,
                          gen: GenerationArgs, stop_token_ids: Sequence[int]) -> BatchOutput:
    """Generate for every prompt in one call; row i uses ``adapter_names[i]`` (None/"base": the base)."""
    import torch

    if not prompt_ids:
        return BatchOutput([], [], 0, 0)
    if any(len(p) == 0 for p in prompt_ids):
        raise WorkbenchError("an empty prompt cannot be generated from (0 tokens)")
    if adapter_names is None:
        adapter_names = [None] * len(prompt_ids)
    if len(adapter_names) != len(prompt_ids):
        raise WorkbenchError(f"{len(prompt_ids)} prompts but {len(adapter_names)} adapter names")
    model, tokenizer = loaded.model, loaded.tokenizer
    names = peft_adapter_names(loaded, adapter_names)
    if model.training:
        model.eval()  # PEFT refuses adapter_names in training mode; generation never wants dropout
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = [int(t) for t in stop_token_ids if t is not None] or [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompt_ids, pad_id, device)
    kwargs = gen.generate_kwargs()
    kwargs.update(eos_token_id=stops, pad_token_id=pad_id)
    if names is not None:
        kwargs["adapter_names"] = names
    if gen.do_sample and gen.seed is not None:
        torch.manual_seed(gen.seed)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    generated = out[:, input_ids.shape[1]:].tolist()
    stop_set = set(stops)
    token_ids = [_cut(row, stop_set, pad_id) for row in generated]
    texts = [t.strip() for t in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
    return BatchOutput(texts, token_ids, int(attention_mask.sum().item()), sum(len(r) for r in token_ids))


def generate_batch(loaded, prompt_ids: list[list[int]], adapter_names: list[str | None] | None,
                   gen: GenerationArgs, stop_token_ids) -> list[str]:
    """The agreed contract: decoded answers, one per prompt, in order."""
    return generate_batch_output(loaded, prompt_ids, adapter_names, gen, stop_token_ids).texts
