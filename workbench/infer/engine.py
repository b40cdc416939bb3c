"""The chat engine: prompts through our templates, streamed answers, and base-vs-adapters compare.

Everything generates through :func:`generate_rows`: one ``model.generate`` call over a left-padded batch
of *rows*, each row with its own prompt, its own adapter (PEFT mixed adapter batches:
``adapter_names=["__base__", "a", ...]``, adapters stay unmerged), its own token limit and stop strings.
A custom streamer splits every decoding step by row, so each row streams its own text, and a per-row
stopping criterion ends a row (stop token, stop string, limit, cancel) without ending the batch.

A chat answer is a batch of one row; COMPARE is one prompt (or one history per variant) answered by
the base model and N adapters in one batch.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.data import records

BASE = "base"


class ContextLengthError(WorkbenchError):
    """The prompt (plus the answer asked for) does not fit the model's context."""


class ToolsNotSupportedError(WorkbenchError):
    """Tools were given to a template without a tool-calling format."""


_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


# -- tools ------------------------------------------------------------------------------------------

def parse_tools(value: Any, *, source: str = "tools") -> list[dict] | None:
    """Tool definitions a person gave (--tools, the chat tab's Tools box): JSON text or a list, checked by
    :func:`workbench.data.records.parse_tools`; errors name ``source`` and where the JSON text breaks.
    Empty → None."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    try:
        return records.parse_tools(value)
    except ValueError as exc:
        raise WorkbenchError(f"{source}: {exc}") from None


def strip_tool_calls(text: str) -> str:
    """The answer text without its ``<tool_call>…</tool_call>`` blocks (and an unfinished last one)."""
    out, pos = [], 0
    while True:
        start = text.find("<tool_call>", pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find("</tool_call>", start)
        if end < 0:
            break
        pos = end + len("</tool_call>")
    return "".join(out).strip()


# -- rows, handles, the batch -----------------------------------------------------------------------

@dataclass
class RowSpec:
    """One answer to generate."""

    prompt_ids: list[int]
    adapter: str | None = None          # None or "base": the base model
    max_new_tokens: int | None = None   # None: the batch's GenerationArgs.max_new_tokens
    stop: tuple[str, ...] = ()          # stop strings (not included in the text)
    label: str = ""
    tools: bool = False                 # tools were offered: parse tool calls from the answer
    # Optional per-row token constraint: ``constraint(generated_ids, scores) -> scores`` is called at every
    # decoding step with this row's generated ids so far and its next-token scores (the API forces tool calls).
    constraint: Any = None


class RowHandle:
    """One answer being generated. Iterate it for text deltas; afterwards ``text``, ``finish_reason``
    ("stop", "length", "cancelled") and token counts are final. Thread-safe to read while it runs."""

    def __init__(self, spec: RowSpec, index: int = 0):
        self.spec = spec
        self.index = index
        self.label = spec.label or (spec.adapter or BASE)
        self.text = ""
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.created_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._events: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # producer side (the streamer)
    def _emit(self, delta: str) -> None:
        if delta:
            self.text += delta
            self._events.put(("delta", delta))

    def _finish(self, reason: str | None = None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self.finish_reason = reason
        self.error = error
        self.finished_at = time.perf_counter()
        self._events.put(("error", error) if error is not None else ("end", reason))
        self._done.set()

    # consumer side
    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def prompt_tokens(self) -> int:
        return len(self.spec.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated, including the end-of-turn token when the answer stopped on one."""
        return len(self.token_ids) + (1 if self.finish_reason == "stop" and not self._stopped_by_string else 0)

    _stopped_by_string = False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        while True:
            kind, payload = self._events.get()
            if kind == "delta":
                yield payload
            elif kind == "error":
                raise payload
            else:
                return

    def wait(self, timeout: float | None = None) -> "RowHandle":
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # The row is final before generate() returns; joining lets no generate thread outlive its
            # answer (a daemon thread still inside torch at interpreter exit aborts the process).
            thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self


class Batch:
    """Rows generated together in one ``generate`` call (running in its own thread)."""

    def __init__(self, rows: list[RowHandle]):
        self.rows = rows
        self.thread: threading.Thread | None = None
        self._ticks: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()

    @property
    def done(self) -> bool:
        return all(r.done for r in self.rows)

    def _tick(self) -> None:
        self._ticks.put(None)

    def updates(self, timeout: float = 0.5) -> Iterator[None]:
        """Yield whenever some row has new text (coalesced), until every row is done; errors re-raised."""
        while not self.done:
            try:
                self._ticks.get(timeout=timeout)
            except queue.Empty:
                continue
            while not self._ticks.empty():  # coalesce: the reader only needs the latest texts
                self._ticks.get_nowait()
            yield
        for row in self.rows:
            if row.error is not None:
                raise row.error
        yield

    def wait(self, timeout: float | None = None) -> list[RowHandle]:
        for row in self.rows:
            row.wait(timeout)
        return self.rows


class _RowsStreamer:
    """Receives each decoding step's tokens (one per row), decodes each row on its own, applies stop
    tokens / stop strings / limits / cancellation, and emits per-row text deltas."""

    def __init__(self, tokenizer, rows: list[RowHandle], stop_ids: Iterable[int], limits: list[int], on_step=None):
        self.tokenizer = tokenizer
        self.rows = rows
        self.stop_ids = set(stop_ids)
        self.limits = limits
        self.on_step = on_step
        self._prompt_seen = False
        self._shown = [0] * len(rows)  # characters of the decoded text already emitted

    def finished(self, i: int) -> bool:
        return self.rows[i].done or self.rows[i].cancelled

    def put(self, value) -> None:
        if not self._prompt_seen and value.dim() == 2:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self._prompt_seen = True
        tokens = value.reshape(-1).tolist()
        for i, token in enumerate(tokens):
            row = self.rows[i]
            if row.done:
                continue
            if row.cancelled:
                self._end(i, "cancelled")
                continue
            if row.first_token_at is None:
                row.first_token_at = time.perf_counter()
            if token in self.stop_ids:
                self._end(i, "stop")
                continue
            row.token_ids.append(token)
            self._advance(i, final=False)
            if not row.done and len(row.token_ids) >= self.limits[i]:
                self._end(i, "length")
        if self.on_step:
            self.on_step()

    def _advance(self, i: int, *, final: bool) -> None:
        row = self.rows[i]
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        stops = row.spec.stop
        if stops:
            search_from = max(0, self._shown[i] - max(len(s) for s in stops))
            hits = [text.find(s, search_from) for s in stops if s]
            hits = [h for h in hits if h >= 0]
            if hits:
                cut = min(hits)
                row._emit(text[self._shown[i]:cut])
                self._shown[i] = cut
                row._stopped_by_string = True
                row._finish("stop")
                return
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                end = len(text.rstrip("\ufffd"))
            for s in stops:  # hold back a tail that may be the start of a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self._shown[i]:
            row._emit(text[self._shown[i]:end])
            self._shown[i] = end

    def _end(self, i: int, reason: str) -> None:
        if reason != "cancelled":
            self._advance(i, final=True)
        if not self.rows[i].done:
            self.rows[i]._finish(reason)

    def end(self) -> None:
        for i, row in enumerate(self.rows):
            if not row.done:
                self._end(i, "cancelled" if row.cancelled else "length")
        if self.on_step:
            self.on_step()


def _make_criteria(streamer: _RowsStreamer, prompt_len: int):
    import torch
    from transformers import StoppingCriteria

    class RowsCriteria(StoppingCriteria):
        """Per-row stop: a row that hit its limit, a stop string or was cancelled stops; the others go on."""

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - prompt_len
            flags = [streamer.finished(i) or generated >= streamer.limits[i] for i in range(len(streamer.rows))]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    return RowsCriteria()


def _make_constraints(rows: list[RowHandle], prompt_len: int):
    from transformers import LogitsProcessor

    constrained = [(i, r.spec.constraint) for i, r in enumerate(rows) if r.spec.constraint is not None]

    class RowsConstraints(LogitsProcessor):
        """Each constrained row's ``spec.constraint`` edits that row's scores; other rows are untouched."""

        def __call__(self, input_ids, scores):
            for i, constraint in constrained:
                scores[i] = constraint(input_ids[i, prompt_len:].tolist(), scores[i])
            return scores

    return RowsConstraints() if constrained else None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and bool(getattr(model, "peft_config", None))


def generate_rows(loaded, rows: list[RowHandle], gen: GenerationArgs, stop_token_ids: Iterable[int],
                  on_step=None) -> list[RowHandle]:
    """Generate every row in ONE ``model.generate`` call (blocking); results land in the handles."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    tokenizer, model = loaded.tokenizer, loaded.model
    stop_ids = list(dict.fromkeys(int(t) for t in stop_token_ids))
    try:
        if not rows:
            return rows
        adapters = [r.spec.adapter if r.spec.adapter not in (None, BASE) else None for r in rows]
        if any(adapters) and not is_peft(model):
            raise WorkbenchError(f"no adapters are attached, so {next(a for a in adapters if a)!r} cannot answer")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        width = max(len(r.spec.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token is at the same position
            n = len(r.spec.prompt_ids)
            input_ids[i, width - n:] = torch.tensor(r.spec.prompt_ids, dtype=torch.long)
            attention[i, width - n:] = 1
        limits = [r.spec.max_new_tokens or gen.max_new_tokens for r in rows]
        streamer = _RowsStreamer(tokenizer, rows, stop_ids, limits, on_step)
        kwargs = gen.generate_kwargs()
        kwargs["max_new_tokens"] = max(limits)
        extra = {}
        if is_peft(model):
            # Always name the adapter of every row: without adapter_names PEFT applies its active adapter.
            extra["adapter_names"] = [a or _PEFT_BASE for a in adapters]
        constraints = _make_constraints(rows, width)
        if constraints is not None:
            extra["logits_processor"] = LogitsProcessorList([constraints])
        if gen.seed is not None:
            torch.manual_seed(gen.seed)
        if model.training:
            model.eval()  # PEFT refuses adapter_names in training mode; generation never wants dropout
        device = next(model.parameters()).device
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_make_criteria(streamer, width)]),
                eos_token_id=stop_ids, pad_token_id=pad_id, **kwargs, **extra,
            )
        streamer.end()
    except BaseException as exc:  # every waiting reader must hear about it
        for r in rows:
            r._finish(error=exc)
        if on_step:
            on_step()
        if not isinstance(exc, Exception):
            raise
    return rows


# -- replies -----------------------------------------------------------------------------------------

@dataclass
class Reply:
    variant: str
    text: str                       # the raw answer text
    content: str                    # the text without tool-call blocks
    tool_calls: list[dict] = field(default_factory=list)  # [{"name", "arguments"}]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    ttft: float | None = None

    def message(self) -> dict:
        """The assistant turn to append to the history."""
        msg: dict = {"role": "assistant", "content": self.content if self.tool_calls else self.text}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


# -- the engine --------------------------------------------------------------------------------------

class ChatEngine:
    """Chat over a :class:`~workbench.models.loader.LoadedModel` whose adapters are attached unmerged.

    ``lock`` serialises generations (a ModelManager passes its own, so a load or unload waits for the
    answer being generated).
    """

    def __init__(self, loaded, template: str | None = "auto", *, lock: threading.RLock | None = None):
        from workbench.data.templates import resolve_template

        self.loaded = loaded
        self.template_choice = template or "auto"
        self.template = resolve_template(template, loaded.label)  # the base model's
        self.lock = lock or threading.RLock()

    # -- what can answer -------------------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        return [BASE, *self.adapter_names]

    @property
    def adapter_names(self) -> list[str]:
        model = self.loaded.model
        return list(model.peft_config) if is_peft(model) else []

    def check_variant(self, name: str | None) -> str | None:
        """"base"/None → None; an attached adapter's name → itself; anything else is an error."""
        if name in (None, "", BASE):
            return None
        if name not in self.adapter_names:
            raise WorkbenchError(f"unknown model or adapter {name!r}; available: {', '.join(self.variants)}")
        return name

    @property
    def context_length(self) -> int | None:
        model = self.loaded.model
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        return getattr(config, "max_position_embeddings", None)

    def template_for(self, variant: str | None = None):
        """The template a variant answers in: with ``auto``, an adapter's training template (its run record),
        else the base model's; a template chosen explicitly, for every variant."""
        adapter = self.check_variant(variant)
        if adapter is None:
            return self.template
        from workbench.data.templates import get_template
        from workbench.models.registry import variant_template

        name, _ = variant_template(self.template_choice, self.loaded.label, self.loaded.adapters.get(adapter))
        return self.template if name == "auto" else get_template(name)

    def stop_token_ids(self) -> list[int]:
        """The end-of-turn ids of every variant's template (rows of several variants share a batch; all of
        them are special tokens, so one variant's stop never cuts another's text)."""
        tokenizer = self.loaded.tokenizer
        return list(dict.fromkeys(i for v in self.variants for i in self.template_for(v).stop_token_ids(tokenizer)))

    def notes(self, *, tools: bool = False) -> list[str]:
        """What the user should know about the templates with this model: a stop token the tokenizer cannot
        encode (answers run to max_new_tokens), a format the model was not trained on, adapters answering in
        their own training templates (or overridden), and, when the conversation uses tools, a template that
        ignores them (rendered in the Hermes format instead)."""
        from workbench.models.registry import variant_template

        tokenizer = self.loaded.tokenizer
        templates = {v: self.template_for(v) for v in self.variants}
        out: list[str] = []
        for t in {t.name: t for t in templates.values()}.values():
            out += t.tokenizer_warnings(tokenizer)
            note = t.tools_note(tokenizer) if tools else None
            if note and note not in out:
                out.append(note)
        if len({t.name for t in templates.values()}) > 1:
            out.append("each answers in the template it was trained with: "
                       + ", ".join(f"{v} {t.name}" for v, t in templates.items()))
        for name in self.adapter_names:
            _, override = variant_template(self.template_choice, self.loaded.label, self.loaded.adapters.get(name))
            if override:
                out.append(override)
        return out

    # -- prompts ---------------------------------------------------------------------------------
    def encode(self, messages: list[dict], *, system: str | None = None, tools: list[dict] | None = None,
               max_new_tokens: int | None = None, strict_length: bool = False,
               variant: str | None = None) -> tuple[list[int], int | None]:
        """Prompt ids for a conversation (ending with the assistant generation prompt) in ``variant``'s
        template, and the number of new tokens that fit. ``strict_length`` makes prompt + max_new_tokens >
        context an error (the API); otherwise the answer is shortened to fit (chat)."""
        template = self.template_for(variant)
        if tools and not template.supports_tools:
            raise ToolsNotSupportedError(
                f"template {template.name!r} has no tool-calling format, but tools were given; "
                "choose a tool-capable template (qwen, chatml, smollm2) or remove the tools"
            )
        ids = template.encode_prompt(self.loaded.tokenizer, messages, system=system, tools=tools)
        limit = self.context_length
        if limit:
            if len(ids) >= limit:
                raise ContextLengthError(
                    f"the prompt is {len(ids)} tokens, but {self.loaded.label} has a context of {limit} tokens; "
                    "shorten the conversation (clear the history) or the system prompt"
                )
            room = limit - len(ids)
            if max_new_tokens is not None and max_new_tokens > room:
                if strict_length:
                    raise ContextLengthError(
                        f"the prompt is {len(ids)} tokens and max_tokens is {max_new_tokens}, which exceeds the "
                        f"context of {limit} tokens; lower max_tokens to at most {room} or shorten the messages"
                    )
                max_new_tokens = room
        return ids, max_new_tokens

    # -- generation ------------------------------------------------------------------------------
    def run(self, rows: list[RowHandle], gen: GenerationArgs, on_step=None) -> list[RowHandle]:
        """Generate the rows in the calling thread, holding the lock (never interleaved with another batch)."""
        with self.lock:
            return generate_rows(self.loaded, rows, gen, self.stop_token_ids(), on_step=on_step)

    def start(self, specs: list[RowSpec], gen: GenerationArgs) -> Batch:
        """Generate the rows in a background thread; read ``batch.rows`` (or iterate a row) as they stream."""
        for spec in specs:
            self.check_variant(spec.adapter)
        batch = Batch([RowHandle(spec, i) for i, spec in enumerate(specs)])
        batch.thread = threading.Thread(target=self.run, args=(batch.rows, gen, batch._tick), daemon=True,
                                        name="workbench-generate")
        for row in batch.rows:
            row._thread = batch.thread
        batch.thread.start()
        return batch

    def spec(self, messages: list[dict], gen: GenerationArgs, *, variant: str | None = None,
             tools: list[dict] | None = None, stop: Iterable[str] = ()) -> RowSpec:
        adapter = self.check_variant(variant)
        ids, max_new = self.encode(messages, system=gen.system, tools=tools, max_new_tokens=gen.max_new_tokens,
                                   variant=adapter)
        return RowSpec(ids, adapter, max_new, tuple(s for s in stop if s), label=variant or BASE, tools=bool(tools))

    def stream(self, messages: list[dict], gen: GenerationArgs, *, variant: str | None = None,
               tools: list[dict] | None = None) -> RowHandle:
        """Start one answer; iterate the handle for text deltas, then :meth:`reply` for the result."""
        return self.start([self.spec(messages, gen, variant=variant, tools=tools)], gen).rows[0]

    def chat(self, messages: list[dict], gen: GenerationArgs | None = None, *, variant: str | None = None,
             tools: list[dict] | None = None) -> Reply:
        gen = gen or GenerationArgs()
        return self.reply(self.stream(messages, gen, variant=variant, tools=tools).wait())

    def compare(self, histories: dict[str, list[dict]] | list[dict], gen: GenerationArgs, *,
                variants: list[str] | None = None, tools: list[dict] | None = None) -> Batch:
        """Base and adapters answering in ONE batch. ``histories``: one conversation for all variants, or
        ``{variant: conversation}`` (multi-turn compare keeps one history per variant)."""
        if isinstance(histories, list):
            names = variants or self.variants
            histories = {name: histories for name in names}
        if not histories:
            raise WorkbenchError("choose at least one model or adapter to compare")
        specs = [self.spec(msgs, gen, variant=name, tools=tools) for name, msgs in histories.items()]
        return self.start(specs, gen)

    def reply(self, row: RowHandle) -> Reply:
        row.wait()
        calls = self.template_for(row.spec.adapter).parse_tool_calls(row.text) if row.spec.tools else []
        return Reply(
            variant=row.label, text=row.text.strip(), content=strip_tool_calls(row.text) if calls else row.text.strip(),
            tool_calls=calls, finish_reason=row.finish_reason, prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            seconds=(row.finished_at or row.created_at) - row.created_at,
            ttft=None if row.first_token_at is None else row.first_token_at - row.created_at,
        )


# -- a queue that batches concurrent requests (the API) ----------------------------------------------

class BatchScheduler:
    """Requests wait in a queue; one worker runs them, taking every waiting request with the same
    sampling settings into ONE batch (up to ``max_batch`` rows). Batches run one after another under
    the engine's lock, so two requests are never interleaved into one another's generation."""

    def __init__(self, engine: ChatEngine, max_batch: int = 8):
        if max_batch < 1:
            raise WorkbenchError(f"max_batch must be at least 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[RowHandle, GenerationArgs]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.rows = 0
        self.largest_batch = 0
        self.cancelled = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="workbench-batcher")
        self._thread.start()

    @staticmethod
    def _key(gen: GenerationArgs, handle: RowHandle):
        if gen.seed is not None:
            return ("seeded", id(handle))  # a seed reproduces an answer only when it runs alone
        if not gen.do_sample:
            return ("greedy", gen.repetition_penalty)
        return ("sample", gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty)

    def submit(self, spec: RowSpec, gen: GenerationArgs) -> RowHandle:
        self.engine.check_variant(spec.adapter)
        if spec.max_new_tokens is None:
            spec.max_new_tokens = gen.max_new_tokens
        handle = RowHandle(spec)
        with self._cond:
            if self._closed:
                raise WorkbenchError("the server is shutting down")
            self._pending.append((handle, gen))
            self._cond.notify()
        return handle

    def _take(self) -> tuple[list[RowHandle], GenerationArgs] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first, gen = self._pending[0]
            key = self._key(gen, first)
            group = [(h, g) for h, g in self._pending if self._key(g, h) == key][: self.max_batch]
            taken = {id(h) for h, _ in group}
            self._pending = [(h, g) for h, g in self._pending if id(h) not in taken]
        rows = []
        for handle, _ in group:
            if handle.cancelled:  # the client left while waiting
                handle._finish("cancelled")
                self.cancelled += 1
            else:
                rows.append(handle)
        return rows, gen

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            rows, gen = taken
            if not rows:
                continue
            for i, row in enumerate(rows):
                row.index = i
            self.batches += 1
            self.rows += len(rows)
            self.largest_batch = max(self.largest_batch, len(rows))
            self.engine.run(rows, gen)
            self.cancelled += sum(r.finish_reason == "cancelled" for r in rows)

    def stats(self) -> dict:
        with self._cond:
            waiting = len(self._pending)
        return {"batches": self.batches, "rows": self.rows, "largest_batch": self.largest_batch,
                "cancelled": self.cancelled, "waiting": waiting, "max_batch": self.max_batch}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for handle, _ in pending:
            handle._finish(error=WorkbenchError("the server is shutting down"))
