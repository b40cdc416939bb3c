"""Many prompts at once (evaluation): every prompt is a row of the loaded model's scheduler, with its own adapter
(or the base), so the base model and any number of attached adapters share the decode steps. The scheduler keeps
up to ``max_rows`` rows running and refills the batch as rows finish (continuous batching), the same path chat
and the API use.
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


def adapter_rows(loaded, adapter_names: Sequence[str | None]) -> list[str | None]:
    """Our names (None/"base" or an attached adapter) → each row's adapter (None: the base); an adapter that is not
    attached is a clear error."""
    known = set(getattr(loaded, "adapters", {}) or {})
    if _is_peft(loaded.model):
        known |= set(getattr(loaded.model, "peft_config", {}) or {})
    rows = []
    for name in adapter_names:
        if name in (None, BASE, PEFT_BASE):
            rows.append(None)
        elif name in known:
            rows.append(name)
        else:
            attached = ", ".join(sorted(known)) or "none"
            raise WorkbenchError(f"adapter {name!r} is not attached to the loaded model (attached: {attached})")
    return rows


def submit_rows(loaded, prompt_ids: Sequence[Sequence[int]], adapter_names: Sequence[str | None] | None,
                gen: GenerationArgs, stop_token_ids: Sequence[int], *, max_rows: int | None = None) -> list:
    """Queue every prompt (row i answered by ``adapter_names[i]``; None/"base": the base); the handles stream."""
    from workbench.infer.engine import RowHandle, RowSpec
    from workbench.infer.scheduler import scheduler_for

    if any(len(p) == 0 for p in prompt_ids):
        raise WorkbenchError("an empty prompt cannot be generated from (0 tokens)")
    if adapter_names is None:
        adapter_names = [None] * len(prompt_ids)
    if len(adapter_names) != len(prompt_ids):
        raise WorkbenchError(f"{len(prompt_ids)} prompts but {len(adapter_names)} adapter names")
    rows = adapter_rows(loaded, adapter_names)
    backend = getattr(loaded, "backend", None)
    if backend is not None:  # the vllm engine: its server batches the requests
        return [backend.submit(RowSpec(list(p), adapter, gen.max_new_tokens), gen) for p, adapter in zip(prompt_ids, rows)]
    stops = [int(t) for t in stop_token_ids if t is not None] or [loaded.tokenizer.eos_token_id]
    scheduler = scheduler_for(loaded)
    if max_rows:
        scheduler.max_rows = max_rows
    handles = [RowHandle(RowSpec(list(p), adapter, gen.max_new_tokens)) for p, adapter in zip(prompt_ids, rows)]
    try:
        with scheduler.arriving_together():
            for handle in handles:
                scheduler.submit(handle, gen, stops)
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return handles


def collect(handles: Sequence) -> BatchOutput:
    """The finished rows' answers (stripped), generated ids (stop token not included) and token counts."""
    for handle in handles:
        handle.wait()
    return BatchOutput([h.text.strip() for h in handles], [list(h.token_ids) for h in handles],
                       sum(len(h.spec.prompt_ids) for h in handles), sum(len(h.token_ids) for h in handles))


def generate_batch_output(loaded, prompt_ids: Sequence[Sequence[int]], adapter_names: Sequence[str | None] | None,
                          gen: GenerationArgs, stop_token_ids: Sequence[int]) -> BatchOutput:
    """Generate for every prompt (blocking); row i uses ``adapter_names[i]`` (None/"base": the base)."""
    if not prompt_ids:
        return BatchOutput([], [], 0, 0)
    return collect(submit_rows(loaded, prompt_ids, adapter_names, gen, stop_token_ids))


def generate_batch(loaded, prompt_ids: list[list[int]], adapter_names: list[str | None] | None,
                   gen: GenerationArgs, stop_token_ids) -> list[str]:
    """The agreed contract: decoded answers, one per prompt, in order."""
    return generate_batch_output(loaded, prompt_ids, adapter_names, gen, stop_token_ids).texts
