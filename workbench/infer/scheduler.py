"""Continuous batching: one thread owns the model; every caller's rows share its decode steps.

A *row* is one answer (a chat turn, one column of a compare, an API request, an evaluation example), with its
own prompt, adapter (or the base), sampling options, stop ids and strings, token limit, seed, stream and
cancellation. Rows wait in a queue and join the running batch at the next step; a finished or cancelled row
leaves at once, so a short answer never waits for a long one and two users chatting share decode steps.

Each loop iteration runs at most one prefill and then one decode step for every running row. A prefill is either
one *chunk* of a long prompt (``chunk`` tokens, batch of one) or several short prompts together, left-padded into
one batch of at most ``chunk`` padded tokens (``4 × chunk`` while no row is decoding, so nobody waits on it);
only the last position's logits are computed. A long new prompt delays the others by one chunk per step instead
of freezing them, and rows that arrive together (an evaluation batch, API clients) start together.

The KV cache of the running batch is one preallocated tensor per layer, ``[rows, kv_heads, columns, head_dim]``,
grown geometrically: a decode step writes one column for every row (no concatenation). Rows are left-padded to a
common column count: a boolean ``valid`` table masks the padding and each row has its own position ids. A row
joining copies its prefilled cache into the batch; rows leaving are removed and all-padding leading columns
dropped in the same copy. Those copies happen on join/leave only, never per token.

Adapters: :class:`~workbench.infer.multilora.MultiLora` (base projection once, per-row LoRA deltas) when every
adapter is plain LoRA, else PEFT's mixed-batch ``adapter_names`` forward. Rows are kept ordered base-first and
grouped by adapter, which the delta path needs. The forward pass is :class:`~workbench.infer.lean.LeanForward` where
the architecture allows it (the same arithmetic without transformers' per-layer overhead), else the model's own.

Text is detokenised incrementally (a sliding window of ids per row), stop strings are searched only in the
new text plus a held-back tail, so per-token work does not grow with the answer's length.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterable

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs

PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names
CHUNK_TOKENS = 256
MAX_ROWS = 16


class EngineClosedError(WorkbenchError):
    """The model was unloaded (or the server stopped) while a row waited or ran."""


# -- the KV cache ----------------------------------------------------------------------------------------

def _cache_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A layer cache in a preallocated buffer: ``update`` writes the new columns in place and returns a view."""

        def __init__(self):
            super().__init__()
            self.length = 0
            self.k_buf = self.v_buf = None

        def lazy_initialization(self, key_states, value_states):
            self.device = key_states.device
            self.is_initialized = True

        def reserve(self, columns: int) -> None:
            if self.k_buf is not None and columns <= self.k_buf.shape[-2]:
                return
            capacity = max(columns, int((self.k_buf.shape[-2] if self.k_buf is not None else 0) * 1.5), 64)
            for name in ("k_buf", "v_buf"):
                old = getattr(self, name)
                new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
                new[:, :, : self.length] = old[:, :, : self.length]
                setattr(self, name, new)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.k_buf is None:
                shape = (*key_states.shape[:2], max(n + 64, 64), key_states.shape[-1])
                self.k_buf = key_states.new_empty(shape)
                self.v_buf = value_states.new_empty(*value_states.shape[:2], shape[2], value_states.shape[-1])
            self.reserve(self.length + n)
            self.k_buf[:, :, self.length: self.length + n] = key_states
            self.v_buf[:, :, self.length: self.length + n] = value_states
            self.length += n
            self.keys = self.k_buf[:, :, : self.length]
            self.values = self.v_buf[:, :, : self.length]
            return self.keys, self.values

        def next_column(self) -> int:
            """One more column, counted and returned: the caller writes its keys and values into the buffers."""
            self.reserve(self.length + 1)
            self.length += 1
            self.keys = self.k_buf[:, :, : self.length]
            self.values = self.v_buf[:, :, : self.length]
            return self.length - 1

        def get_seq_length(self) -> int:
            return self.length

        def set(self, k_buf, v_buf, length: int) -> None:
            self.k_buf, self.v_buf, self.length = k_buf, v_buf, length
            self.keys, self.values = k_buf[:, :, :length], v_buf[:, :, :length]
            self.device = k_buf.device
            self.is_initialized = True

    return GrowingLayer


def new_cache():
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=_cache_layer_class())


def merge_caches(batch, batch_valid, new, new_valid):
    """``batch`` (B rows, its ``valid`` table) plus prefilled rows ``new`` (k rows, their ``valid`` table) → a cache
    of B+k rows, right-aligned to the longer of the two; returns (cache, valid)."""
    import torch

    old_len = batch.layers[0].length if batch is not None else 0
    new_length = new.layers[0].length
    width = max(old_len, new_length)
    old_rows = batch_valid.shape[0] if batch is not None else 0
    rows = old_rows + new_valid.shape[0]
    capacity = width + 64
    device = new.layers[0].k_buf.device
    valid = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
    if batch is not None:
        valid[:old_rows, width - old_len: width] = batch_valid[:, :old_len]
    valid[old_rows:, width - new_length: width] = new_valid[:, :new_length]
    merged = new_cache()
    layer_class = _cache_layer_class()
    for i, new_layer in enumerate(new.layers):
        nk, nv = new_layer.k_buf, new_layer.v_buf
        k = nk.new_zeros(rows, nk.shape[1], capacity, nk.shape[-1])
        v = nv.new_zeros(rows, nv.shape[1], capacity, nv.shape[-1])
        if batch is not None:
            layer = batch.layers[i]
            k[:old_rows, :, width - old_len: width] = layer.k_buf[:, :, :old_len]
            v[:old_rows, :, width - old_len: width] = layer.v_buf[:, :, :old_len]
        k[old_rows:, :, width - new_length: width] = nk[:, :, :new_length]
        v[old_rows:, :, width - new_length: width] = nv[:, :, :new_length]
        merged_layer = layer_class()
        merged_layer.set(k, v, width)
        merged.layers.append(merged_layer)
    return merged, valid


def slice_cache(cache, start: int, end: int):
    """Rows ``start:end`` of ``cache`` as a cache of their own that writes into the same buffers (capacity for the
    step must be reserved first)."""
    layer_class = _cache_layer_class()
    out = new_cache()
    for layer in cache.layers:
        sub = layer_class()
        sub.set(layer.k_buf[start:end], layer.v_buf[start:end], layer.length)
        out.layers.append(sub)
    return out


def select_rows(cache, valid, keep: list[int]):
    """Only the rows ``keep`` (in that order), with leading columns that are padding for all of them dropped."""
    import torch

    length = cache.layers[0].length
    index = torch.tensor(keep, dtype=torch.long, device=valid.device)
    valid = valid.index_select(0, index)
    used = valid[:, :length].any(dim=0).nonzero()
    drop = int(used[0]) if len(used) else length
    new_len = length - drop
    capacity = new_len + 64
    out_valid = torch.zeros(len(keep), capacity, dtype=torch.bool, device=valid.device)
    out_valid[:, :new_len] = valid[:, drop:length]
    layer_class = _cache_layer_class()
    out = new_cache()
    for layer in cache.layers:
        k = layer.k_buf.new_empty(len(keep), layer.k_buf.shape[1], capacity, layer.k_buf.shape[-1])
        v = layer.v_buf.new_empty(len(keep), layer.v_buf.shape[1], capacity, layer.v_buf.shape[-1])
        k[:, :, :new_len] = layer.k_buf.index_select(0, index)[:, :, drop:length]
        v[:, :, :new_len] = layer.v_buf.index_select(0, index)[:, :, drop:length]
        new_layer = layer_class()
        new_layer.set(k, v, new_len)
        out.layers.append(new_layer)
    return out, out_valid


# -- one row's decoding state ---------------------------------------------------------------------------

class _Row:
    def __init__(self, handle: Any, gen: GenerationArgs, stop_ids: Iterable[int], default_limit: int):
        import torch

        self.handle = handle
        self.gen = gen
        self.adapter = handle.spec.adapter
        self.prompt = list(handle.spec.prompt_ids)
        self.limit = handle.spec.max_new_tokens or gen.max_new_tokens or default_limit
        self.stop_ids = set(stop_ids)
        self.stops = tuple(s for s in handle.spec.stop if s)
        self.prefilled = 0        # prompt tokens already in the row's own cache
        self.cache = None         # the row's own cache while prefilling
        self.next_token: int | None = None
        self.length = 0           # tokens of this row in the KV cache (its next position id)
        self.sampling = bool(gen.do_sample) and (gen.temperature or 0) > 0
        self.generator = None
        if self.sampling and gen.seed is not None:
            self.generator = torch.Generator().manual_seed(int(gen.seed))
        self.penalty = gen.repetition_penalty if gen.repetition_penalty not in (None, 1.0) else None
        self.seen = None
        if self.penalty is not None:
            self.seen = torch.tensor(self.prompt, dtype=torch.long)
        self.simple = not self.sampling and self.penalty is None and handle.spec.constraint is None
        # incremental detokenisation (a window of ids) and the held-back text (a possible stop-string start)
        self.prefix_offset = 0
        self.read_offset = 0
        self.held = ""

    @property
    def finished(self) -> bool:
        return self.handle.done


def _pick(row: _Row, scores):
    """The next token of one row from its float32 scores: constraint, repetition penalty, then greedy or
    temperature/top-k/top-p sampling (the order of transformers' processors)."""
    import torch

    spec = row.handle.spec
    if spec.constraint is not None:
        scores = spec.constraint(list(row.handle.token_ids), scores)
    if row.penalty is not None:
        seen = row.seen.to(scores.device)
        picked = scores.gather(0, seen)
        picked = torch.where(picked < 0, picked * row.penalty, picked / row.penalty)
        scores = scores.scatter(0, seen, picked)
    if not row.sampling:
        return int(scores.argmax())
    gen = row.gen
    scores = scores / gen.temperature
    if gen.top_k and 0 < gen.top_k < scores.shape[-1]:
        kth = torch.topk(scores, gen.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if gen.top_p is not None and gen.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - gen.top_p)
        remove[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=row.generator))


# -- the scheduler ---------------------------------------------------------------------------------------

class Scheduler:
    """The rows of every caller, generated together on one model (see the module docstring).

    ``loaded`` is a :class:`~workbench.models.loader.LoadedModel`; its ``model`` may change between steps (an
    adapter attached or detached inside :meth:`paused`), which the scheduler notices and adapts to.
    """

    def __init__(self, loaded, *, max_rows: int = MAX_ROWS, chunk_tokens: int = CHUNK_TOKENS, lean: bool = True):
        if max_rows < 1:
            raise WorkbenchError(f"max_rows must be at least 1, got {max_rows}")
        self.loaded = loaded
        self.lean = lean  # LeanForward where the architecture allows it (False: transformers' forward always)
        self._lean = None
        self.max_rows = max_rows
        self.chunk_tokens = max(1, chunk_tokens)
        self._cond = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._prefilling: list[_Row] = []
        self._active: list[_Row] = []
        self._cache = None
        self._valid = None
        self._closed: str | None = None
        self._pause = 0
        self._holding = 0  # callers inside arriving_together
        self._busy = False
        self._model_key = None
        self._multilora = None
        self._peft = False
        self._forward_model = None
        self.steps = 0
        self.rows_done = 0
        self.largest_batch = 0
        self.largest_prefill = 0  # rows prefilled in one forward
        self.cancelled = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="workbench-scheduler")
        self._thread.start()

    # -- callers ----------------------------------------------------------------------------------------
    def submit(self, handle: Any, gen: GenerationArgs, stop_ids: Iterable[int]) -> Any:
        if not handle.spec.prompt_ids:
            raise WorkbenchError("an empty prompt cannot be generated from (0 tokens)")
        row = _Row(handle, gen, stop_ids, 256)
        handle._thread = None
        with self._cond:
            if self._closed:
                raise EngineClosedError(self._closed)
            self._waiting.append(row)
            self._cond.notify_all()
        return handle

    @contextmanager
    def arriving_together(self):
        """Rows submitted inside start together: none is taken from the queue before the last one is in (an
        evaluation batch, a compare turn), so short prompts share one prefill instead of racing the loop."""
        with self._cond:
            self._holding += 1
        try:
            yield
        finally:
            with self._cond:
                self._holding -= 1
                self._cond.notify_all()

    @contextmanager
    def paused(self):
        """No step runs inside (wait for the current one): for attaching or detaching adapters."""
        with self._cond:
            self._pause += 1
            while self._busy:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._pause -= 1
                self._cond.notify_all()

    def close(self, message: str = "the model was unloaded") -> None:
        """Stop: every waiting or running row ends with ``message`` as its error (after the current step)."""
        with self._cond:
            if self._closed:
                return
            self._closed = message
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        error = EngineClosedError(f"{message}; the answer was stopped")
        for row in [*self._waiting, *self._prefilling, *self._active]:
            row.handle._finish(error=error)
        self._waiting.clear()
        self._prefilling.clear()
        self._active.clear()
        self._cache = self._valid = None
        if self._multilora is not None:
            self._multilora.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def stats(self) -> dict:
        with self._cond:
            return {"running": len(self._active), "prefilling": len(self._prefilling), "waiting": len(self._waiting),
                    "steps": self.steps, "rows": self.rows_done, "largest_batch": self.largest_batch,
                    "largest_prefill": self.largest_prefill, "forward": "lean" if self._lean else "transformers",
                    "cancelled": self.cancelled, "max_rows": self.max_rows}

    # -- the loop ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._closed and (self._pause or not (
                        (self._waiting and not self._holding) or self._prefilling or self._active)):
                    self._cond.wait()
                if self._closed:
                    return
                self._busy = True
                while (self._waiting and not self._holding
                       and len(self._active) + len(self._prefilling) < self.max_rows):
                    self._prefilling.append(self._waiting.popleft())
            try:
                with torch.inference_mode():
                    self._step()
            except BaseException as exc:  # a failed step fails the rows in it, never the scheduler
                for row in [*self._prefilling, *self._active]:
                    row.handle._finish(error=exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                self._prefilling.clear()
                self._active.clear()
                self._cache = self._valid = None
                if not isinstance(exc, Exception):
                    raise
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _step(self) -> None:
        self._refresh_model()
        self._drop_cancelled_prefills()
        if self._prefilling:
            group = self._next_prefill()
            if self._whole(group[0]):
                self._prefill_together(group)
            elif self._prefill_chunk(group[0]):
                self._prefilling.remove(group[0])
                self._join([group[0]], group[0].cache, None)
        self._remove_finished()
        if self._active:
            self._decode()
            self._remove_finished()

    # -- the model --------------------------------------------------------------------------------------
    def _refresh_model(self) -> None:
        """(Re)build the adapter tables when the model or its adapters changed; rows of a vanished adapter end."""
        model = self.loaded.model
        names = tuple(getattr(model, "peft_config", {}) or {})
        key = (id(model), names, tuple(sorted((self.loaded.adapters or {}).items())), self.lean)
        if key == self._model_key:
            return
        if self._multilora is not None:
            self._multilora.close()
        self._model_key = key
        self._peft = bool(names) and hasattr(model, "get_base_model")
        self._multilora = None
        self._forward_model = model
        if self._peft:
            from workbench.infer.multilora import MultiLora

            self._multilora = MultiLora.build(model)
            if self._multilora is not None:
                self._forward_model = model.get_base_model()
        self._lean = None
        if self.lean and (not self._peft or self._multilora is not None):
            from workbench.infer.lean import LeanForward

            self._lean = LeanForward.build(self._forward_model, self._multilora)
        if model.training:
            model.eval()
        for row in [*self._prefilling, *self._active]:
            if row.adapter is not None and row.adapter not in names:
                row.handle._finish(error=WorkbenchError(
                    f"adapter {row.adapter!r} was detached while it was answering; the answer was stopped"))

    def _forward(self, input_ids, position_ids, mask, cache, adapters: list[str | None]):
        """Next-token logits for every row (float32), each row with its adapter."""
        if self._multilora is not None:
            self._multilora.select(adapters)
        elif not self._peft and any(adapters):
            raise WorkbenchError(f"no adapters are attached, so {next(a for a in adapters if a)!r} cannot answer")
        if self._lean is not None:
            return self._lean(input_ids, position_ids, mask, cache, self._multilora)
        if self._multilora is not None:
            with self._multilora:
                return self._call(self._forward_model, input_ids, position_ids, mask, cache)
        if not self._peft:
            return self._call(self._forward_model, input_ids, position_ids, mask, cache)
        # PEFT's own forward, one adapter group at a time: DoRA and other LoRA variants cannot be mixed in one
        # batch. Rows are grouped by adapter, so each group is a contiguous slice of the batch and of its cache.
        import torch

        groups = [(i, adapters[i]) for i in range(len(adapters)) if i == 0 or adapters[i] != adapters[i - 1]]
        bounds = [start for start, _ in groups[1:]] + [len(adapters)]
        if len(groups) == 1:
            return self._peft_call(adapters[0], input_ids, position_ids, mask, cache)
        logits = []
        for (start, adapter), end in zip(groups, bounds):
            sub = slice_cache(cache, start, end)
            logits.append(self._peft_call(adapter, input_ids[start:end], position_ids[start:end],
                                          None if mask is None else mask[start:end], sub))
        added = input_ids.shape[1]
        for layer in cache.layers:
            layer.set(layer.k_buf, layer.v_buf, layer.length + added)
        return torch.cat(logits)

    @staticmethod
    def _call(model, input_ids, position_ids, mask, cache):
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, cache=cache, use_cache=True,
                    logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _peft_call(self, adapter: str | None, input_ids, position_ids, mask, cache):
        model = self._forward_model
        if adapter is None:
            with model.disable_adapter():
                return self._call(model, input_ids, position_ids, mask, cache)
        if model.active_adapters != [adapter]:
            model.set_adapter(adapter)
        return self._call(model, input_ids, position_ids, mask, cache)

    @property
    def _device(self):
        return next(self.loaded.model.parameters()).device

    def _mask(self, mask):
        """A boolean 4-D mask ``[rows, 1, queries, keys]`` as the attention wants it: as is for SDPA, additive for
        eager attention."""
        import torch

        config = getattr(self._forward_model, "config", None)
        if getattr(config, "_attn_implementation", "sdpa") == "eager":
            dtype = next(self._forward_model.parameters()).dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    # -- prefill, join, decode, leave ---------------------------------------------------------------------
    def _drop_cancelled_prefills(self) -> None:
        for row in list(self._prefilling):
            if row.handle.cancelled or row.finished:
                self._prefilling.remove(row)
                self._end(row, "cancelled")

    def _whole(self, row: _Row) -> bool:
        """The row's prompt is prefilled in one pass (it fits one chunk and none of it is in a cache yet)."""
        return not row.prefilled and len(row.prompt) <= self.chunk_tokens

    def _next_prefill(self) -> list[_Row]:
        """The rows to prefill now: the first waiting row and, if its whole prompt fits one chunk, the short prompts
        after it while their left-padded batch stays within the budget (same adapter only on PEFT's own path,
        whose adapter groups need a cache to slice)."""
        first = self._prefilling[0]
        if not self._whole(first):
            return [first]
        budget = self.chunk_tokens * (1 if self._active else 4)
        group, longest = [first], len(first.prompt)
        for row in self._prefilling[1:]:
            if not self._whole(row):
                continue
            if self._peft and self._multilora is None and row.adapter != first.adapter:
                continue
            if max(longest, len(row.prompt)) * (len(group) + 1) > budget:
                break
            group.append(row)
            longest = max(longest, len(row.prompt))
        return group

    def _prefill_together(self, rows: list[_Row]) -> None:
        """Whole short prompts in one left-padded batch; each row's first token is picked and the rows join."""
        import torch

        rows = sorted(rows, key=self._group)
        width = max(len(r.prompt) for r in rows)
        device = self._device
        input_ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        positions = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            n = len(row.prompt)
            input_ids[i, width - n:] = torch.tensor(row.prompt, dtype=torch.long)
            positions[i, width - n:] = torch.arange(n)
            valid[i, width - n:] = True
        mask = None  # no padding: the model's own causal mask
        if not bool(valid.all()):
            causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
            # a padding position attends to itself only: a row of the mask with no key at all gives NaN in SDPA, and
            # its keys/values (masked later, but multiplied by 0) would carry the NaN into every later step
            mask = self._mask(((causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device))[:, None])
        cache = new_cache()
        logits = self._forward(input_ids, positions, mask, cache, [r.adapter for r in rows])
        self.largest_prefill = max(self.largest_prefill, len(rows))
        for row in rows:
            self._prefilling.remove(row)
            row.prefilled = row.length = len(row.prompt)
        for row, token in zip(rows, self._choose(rows, logits)):
            self._accept(row, token)
        self._join(rows, cache, valid)

    def _prefill_chunk(self, row: _Row) -> bool:
        """One chunk of ``row``'s prompt into its own cache; True when the prompt is done (first token picked)."""
        import torch

        if row.cache is None:
            row.cache = new_cache()
        start = row.prefilled
        ids = row.prompt[start: start + self.chunk_tokens]
        device = self._device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(ids), device=device)[None, :]
        logits = self._forward(input_ids, positions, None, row.cache, [row.adapter])
        row.prefilled += len(ids)
        if row.prefilled < len(row.prompt):
            return False
        row.length = row.prefilled
        self._accept(row, self._choose([row], logits)[0])
        return True

    def _join(self, rows: list[_Row], cache, valid) -> None:
        """Put prefilled rows (their cache, its ``valid`` table or None: all columns real) into the running batch,
        keeping base rows first and adapters grouped; rows already finished leave again at the next removal."""
        import torch

        if valid is None:
            valid = torch.ones(len(rows), cache.layers[0].length, dtype=torch.bool, device=self._device)
        self._cache, self._valid = merge_caches(self._cache, self._valid, cache, valid)
        for row in rows:
            row.cache = None
        self._active.extend(rows)
        order = sorted(range(len(self._active)), key=lambda i: self._group(self._active[i]))
        if order != list(range(len(self._active))):
            self._cache, self._valid = select_rows(self._cache, self._valid, order)
            self._active = [self._active[i] for i in order]
        self.largest_batch = max(self.largest_batch, len(self._active))

    def _group(self, row: _Row) -> tuple:
        return (row.adapter is not None, row.adapter or "")

    def _decode(self) -> None:
        import torch

        rows = self._active
        device = self._device
        length = self._cache.layers[0].length
        for layer in self._cache.layers:
            layer.reserve(length + 1)
        if self._valid.shape[1] < length + 1:
            grown = torch.zeros(len(rows), max(length + 1, int(self._valid.shape[1] * 1.5)), dtype=torch.bool,
                                device=self._valid.device)
            grown[:, : self._valid.shape[1]] = self._valid
            self._valid = grown
        self._valid[:, length] = True
        input_ids = torch.tensor([[r.next_token] for r in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.length] for r in rows], dtype=torch.long, device=device)
        logits = self._forward(input_ids, positions, self._mask(self._valid[:, None, None, : length + 1]), self._cache,
                               [r.adapter for r in rows])
        self.steps += 1
        for row in rows:
            row.length += 1
        for row, token in zip(rows, self._choose(rows, logits)):
            self._accept(row, token)

    def _choose(self, rows: list[_Row], logits) -> list[int]:
        simple = [i for i, r in enumerate(rows) if r.simple]
        tokens: list[int] = [0] * len(rows)
        if simple:
            picked = logits[simple].argmax(-1).tolist() if len(simple) < len(rows) else logits.argmax(-1).tolist()
            for i, token in zip(simple, picked):
                tokens[i] = token
        for i, row in enumerate(rows):
            if not row.simple:
                tokens[i] = _pick(row, logits[i])
        return tokens

    def _accept(self, row: _Row, token: int) -> None:
        """A new token for ``row``: stop, limit, cancellation, then text."""
        import torch

        handle = row.handle
        if handle.done:
            return
        if handle.first_token_at is None:
            handle.first_token_at = time.perf_counter()
        if handle.cancelled:
            self._end(row, "cancelled")
            return
        if token in row.stop_ids:
            self._end(row, "stop")
            return
        handle.token_ids.append(token)
        if row.seen is not None:
            row.seen = torch.cat([row.seen, torch.tensor([token], dtype=torch.long)])
        row.next_token = token
        self._advance(row)
        if not handle.done and len(handle.token_ids) >= row.limit:
            self._end(row, "length")

    def _advance(self, row: _Row, final: bool = False) -> None:
        """Decode the row's new tokens (a window of ids) and emit them, holding back a possible stop-string start."""
        tokenizer = self.loaded.tokenizer
        ids = row.handle.token_ids
        prefix = tokenizer.decode(ids[row.prefix_offset: row.read_offset], skip_special_tokens=True)
        text = tokenizer.decode(ids[row.prefix_offset:], skip_special_tokens=True)
        delta = ""
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            delta = text[len(prefix):]
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
        elif final:
            delta = text[len(prefix):] if len(text) > len(prefix) else ""
        buffer = row.held + delta
        if row.stops:
            hits = [buffer.find(s) for s in row.stops]
            hits = [h for h in hits if h >= 0]
            if hits:
                row.handle._emit(buffer[: min(hits)])
                row.held = ""
                row.handle._stopped_by_string = True
                row.handle._finish("stop")
                return
        keep = 0
        if not final:
            for s in row.stops:  # hold back a tail that may be the start of a stop string
                for k in range(min(len(s) - 1, len(buffer)), 0, -1):
                    if buffer.endswith(s[:k]):
                        keep = max(keep, k)
                        break
        row.handle._emit(buffer[: len(buffer) - keep])
        row.held = buffer[len(buffer) - keep:]

    def _end(self, row: _Row, reason: str) -> None:
        if row.handle.done:
            return
        if reason != "cancelled":
            self._advance(row, final=True)
        if reason == "cancelled":
            self.cancelled += 1
        if not row.handle.done:
            row.handle._finish(reason)
        self.rows_done += 1

    def _remove_finished(self) -> None:
        for row in self._active:
            if row.handle.cancelled and not row.finished:
                self._end(row, "cancelled")
        keep = [i for i, r in enumerate(self._active) if not r.finished]
        if len(keep) == len(self._active):
            return
        if not keep:
            self._active, self._cache, self._valid = [], None, None
            return
        self._cache, self._valid = select_rows(self._cache, self._valid, keep)
        self._active = [self._active[i] for i in keep]


_SCHEDULERS_LOCK = threading.Lock()


def scheduler_for(loaded) -> Scheduler:
    """The loaded model's scheduler (started on first use; a closed one is replaced)."""
    with _SCHEDULERS_LOCK:
        scheduler = getattr(loaded, "scheduler", None)
        if scheduler is None or scheduler.closed:
            scheduler = Scheduler(loaded)
            loaded.scheduler = scheduler
        return scheduler


def close_scheduler(loaded, message: str = "the model was unloaded") -> None:
    """End the loaded model's scheduler (or vLLM server), if it has one: waiting and running rows get ``message``."""
    if loaded is None:
        return
    scheduler = getattr(loaded, "scheduler", None)
    if scheduler is not None:
        scheduler.close(message)
    backend = getattr(loaded, "backend", None)
    if backend is not None:
        backend.close()


@contextmanager
def paused(loaded):
    """No generation step runs inside (the current one finishes first): for changing the model's adapters."""
    scheduler = getattr(loaded, "scheduler", None)
    if scheduler is None or scheduler.closed:
        yield
        return
    with scheduler.paused():
        yield
