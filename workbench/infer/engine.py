"""The chat engine: prompts through our templates, streamed answers, and base-vs-adapters compare.

Every answer is a *row* (:class:`RowSpec` → :class:`RowHandle`) handed to the loaded model's one
:class:`~workbench.infer.scheduler.Scheduler`, which batches the rows of every caller (chat tabs, compare, the
API, evaluation) continuously, each row with its own adapter, sampling, stops, limit and cancellation. A chat
answer is one row; COMPARE is one prompt (or one history per variant) answered by the base model and N adapters
as N rows that share the decode steps.
"""

from __future__ import annotations

import contextlib
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
    ignore_eos: bool = False            # run to max_new_tokens through end-of-turn tokens (vLLM's ignore_eos)


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
        self.listener = None  # called after every delta and at the end (a Batch's wake-up)

    # producer side (the scheduler)
    def _emit(self, delta: str) -> None:
        if delta:
            self.text += delta
            self._events.put(("delta", delta))
            if self.listener is not None:
                self.listener()

    def _finish(self, reason: str | None = None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self.finish_reason = reason
        self.error = error
        self.finished_at = time.perf_counter()
        self._events.put(("error", error) if error is not None else ("end", reason))
        self._done.set()
        if self.listener is not None:
            self.listener()

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

    def updates(self) -> Iterator[None]:
        """Yield once per batch of new deltas (all that arrived meanwhile, coalesced) until the row ends; errors
        re-raised. For a reader that shows ``text`` whole (the Chat tab): a slow reader never falls behind."""
        while True:
            events = [self._events.get()]
            while not self._events.empty():
                events.append(self._events.get_nowait())
            for kind, payload in events:
                if kind == "error":
                    raise payload
            if events[-1][0] == "end":
                return
            yield

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
    """Rows started together (a compare); the scheduler generates them side by side."""

    def __init__(self, rows: list[RowHandle]):
        self.rows = rows
        self._ticks: queue.Queue = queue.Queue()
        for row in rows:
            row.listener = self._tick

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


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and bool(getattr(model, "peft_config", None))


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

    Every engine over the same loaded model shares its scheduler (:func:`~workbench.infer.scheduler.scheduler_for`),
    so answers for different callers are batched together; a ModelManager closes it on unload.
    """

    def __init__(self, loaded, template: str | None = "auto"):
        from workbench.data.templates import resolve_template

        self.loaded = loaded
        self.template_choice = template or "auto"
        self.template = resolve_template(template, loaded.label)  # the base model's

    # -- what can answer -------------------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        return [BASE, *self.adapter_names]

    @property
    def adapter_names(self) -> list[str]:
        if self.backend is not None:
            return list(self.loaded.adapters)
        model = self.loaded.model
        return list(model.peft_config) if is_peft(model) else []

    @property
    def backend(self):
        """The vllm engine's server when the model was loaded with ``engine vllm``, else None (ours)."""
        return getattr(self.loaded, "backend", None)

    def check_variant(self, name: str | None) -> str | None:
        """"base"/None → None; an attached adapter's name → itself; anything else is an error."""
        if name in (None, "", BASE):
            return None
        if name not in self.adapter_names:
            raise WorkbenchError(f"unknown model or adapter {name!r}; available: {', '.join(self.variants)}")
        return name

    @property
    def context_length(self) -> int | None:
        if self.backend is not None:
            return getattr(self.backend, "context_length", None)
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
    @property
    def scheduler(self):
        from workbench.infer.scheduler import scheduler_for

        return scheduler_for(self.loaded)

    def submit(self, spec: RowSpec, gen: GenerationArgs) -> RowHandle:
        """Queue one row; it joins the running batch at the next step. Iterate the handle for text deltas."""
        self.check_variant(spec.adapter)
        if spec.max_new_tokens is None:
            spec.max_new_tokens = gen.max_new_tokens
        if self.backend is not None:
            return self.backend.submit(spec, gen)
        return self.scheduler.submit(RowHandle(spec), gen, [] if spec.ignore_eos else self.stop_token_ids())

    def start(self, specs: list[RowSpec], gen: GenerationArgs) -> Batch:
        """Start the rows side by side; read ``batch.rows`` (or iterate a row) as they stream."""
        for spec in specs:
            self.check_variant(spec.adapter)
        rows: list[RowHandle] = []
        together = self.scheduler.arriving_together() if self.backend is None else contextlib.nullcontext()
        try:
            with together:
                for spec in specs:
                    rows.append(self.submit(spec, gen))
        except BaseException:
            for row in rows:
                row.cancel()
            raise
        for i, row in enumerate(rows):
            row.index = i
        return Batch(rows)

    def stats(self) -> dict:
        """What the engine is doing (the API's /health)."""
        if self.backend is not None:
            return {"engine": "vllm"}
        return {"engine": "transformers", **self.scheduler.stats()}

    def set_max_rows(self, rows: int) -> None:
        if rows < 1:
            raise WorkbenchError(f"max rows must be at least 1, got {rows}")
        if self.backend is None:
            self.scheduler.max_rows = rows

    def close(self, reason: str) -> None:
        """Stop generating: waiting and running answers end with ``reason``."""
        from workbench.infer.scheduler import close_scheduler

        close_scheduler(self.loaded, reason)

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
