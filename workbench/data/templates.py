"""Chat templates: how a conversation becomes text, which tokens are trained, and when generation stops.

A template renders a conversation as a list of *segments*; each segment is prompt text (never
trained unless ``train_on_prompt``) or the response of one assistant turn (its content plus the
end-of-turn token, so trained models learn to stop). The whole text is tokenised once with the fast
tokenizer, and each token's label comes from the segment its first character falls in. Tokenising
the text in one piece is what makes the ids equal ``tokenizer.apply_chat_template`` token for token,
whatever merges the tokenizer makes across segment borders.

Two kinds of template:

* :class:`FormatTemplate` — written here from format strings (``qwen``, ``chatml``, ``smollm2``,
  ``llama2``, ``llama3``, ``mistral``, ``alpaca``, ``default``).
* :class:`JinjaTemplate` (``jinja``) — the tokenizer's own ``chat_template``; response spans are found by
  rendering growing prefixes of the conversation.

``auto`` is a rule, not a template: :func:`resolve_template` picks the model's registry default, else the
tokenizer's own jinja template. The rule lives here, with what it reads (a merged model's export record, an
adapter's run record, the model catalog): :func:`default_template` and :func:`variant_template`.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from pathlib import Path

from workbench.config.base import WorkbenchError
from workbench.models.catalog import lookup
from workbench.rundir import EXPORT_RECORD, RUN_RECORD

IGNORE_INDEX = -100

# The Hermes-style tool protocol used by Qwen2.5 and many ChatML models.
_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>"
)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class Segment:
    text: str
    kind: str  # "prompt" | "content" (message text inside the prompt) | "response"
    round: int  # the assistant turn this segment leads to (or is)


def _dumps(value: Any) -> str:
    # Same as transformers' jinja ``tojson`` filter, so rendered tool JSON matches the tokenizer's own templates.
    return json.dumps(value, ensure_ascii=False)


def split_system(messages: list[dict], system: str | None) -> tuple[list[dict], str | None]:
    """Accept a leading ``{"role": "system"}`` message as the system prompt."""
    if messages and messages[0].get("role") == "system":
        if system is None:
            system = messages[0].get("content") or ""
        messages = messages[1:]
    return list(messages), system


def check_messages(messages: list[dict], *, template: str) -> None:
    if not messages:
        raise WorkbenchError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            raise WorkbenchError(f"message {i + 1}: a system message is only allowed first")
        if role not in ("user", "assistant", "tool"):
            raise WorkbenchError(f"message {i + 1}: unknown role {role!r} (use user, assistant, tool or system)")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise WorkbenchError(f"message {i + 1}: content must be text, got {type(content).__name__}")
    if messages[0]["role"] != "user":
        raise WorkbenchError(f"the first message (after any system prompt) must be from the user, "
                             f"not {messages[0]['role']!r} (template {template})")


def hermes_tools_text(tools: list[dict]) -> str:
    """Tool definitions as Hermes-format system text."""
    return _TOOLS_HEADER + "".join("\n" + _dumps(t) for t in tools) + _TOOLS_FOOTER


def hermes_tool_calls_text(calls: list[dict]) -> str:
    return "\n".join(
        '<tool_call>\n{"name": "' + c["name"] + '", "arguments": ' + _dumps(c.get("arguments", {})) + "}\n</tool_call>"
        for c in calls
    )


def parse_hermes_tool_calls(text: str) -> list[dict]:
    """``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks → ``[{"name", "arguments"}]``.

    Blocks that are not valid JSON objects with a name are skipped (a half-trained model writes those).
    """
    calls = []
    for block in _TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass
            calls.append({"name": obj["name"], "arguments": args})
    return calls


class Template:
    """Base: everything except how segments are produced."""

    name: str = ""
    description: str = ""
    default_system: str = ""
    supports_tools: bool = False

    # -- to implement --------------------------------------------------------------------------
    def segments(self, tokenizer, messages: list[dict], system: str | None = None, tools: list[dict] | None = None,
                 add_generation_prompt: bool = True) -> list[Segment]:
        raise NotImplementedError

    def stop_strings(self, tokenizer) -> list[str]:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def render(self, tokenizer, messages: list[dict], system: str | None = None, tools: list[dict] | None = None,
               add_generation_prompt: bool = True) -> str:
        return "".join(s.text for s in self.segments(tokenizer, messages, system, tools, add_generation_prompt))

    def encode_prompt(self, tokenizer, messages: list[dict], system: str | None = None,
                      tools: list[dict] | None = None) -> list[int]:
        """Token ids of the conversation so far, ending with the assistant generation prompt."""
        text = self.render(tokenizer, messages, system, tools, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_supervised(self, tokenizer, messages: list[dict], system: str | None = None,
                          tools: list[dict] | None = None, *, train_on_prompt: bool = False,
                          mask_history: bool = False, cutoff_len: int | None = None,
                          stats: dict | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` with -100 on prompt tokens; raises if nothing trainable is left."""
        (result,) = self.encode_supervised_batch(
            tokenizer, [(messages, system, tools)], train_on_prompt=train_on_prompt, mask_history=mask_history,
            cutoff_len=cutoff_len, stats=stats,
        )
        if result is None:
            raise WorkbenchError(
                f"no response token is left within cutoff_len={cutoff_len}: the conversation has no assistant "
                "turn, or its prompt cannot be shortened enough; raise cutoff_len"
            )
        return result

    def encode_supervised_batch(self, tokenizer, conversations: Iterable[tuple[list[dict], str | None, Any]], *,
                                train_on_prompt: bool = False, mask_history: bool = False,
                                cutoff_len: int | None = None, stats: dict | None = None
                                ) -> list[tuple[list[int], list[int]] | None]:
        """Encode many conversations with one call into the fast tokenizer.

        Returns ``None`` for a conversation with no trainable token left (counted in ``stats``).
        ``stats`` collects: ``truncated`` (cut at cutoff_len), ``prompt_shortened`` (the prompt was cut
        so a response could stay), ``dropped`` (no response token could be kept).
        """
        texts, spans_list, contents_list = [], [], []
        for messages, system, tools in conversations:
            segs = self.segments(tokenizer, messages, system, tools, add_generation_prompt=False)
            text, trained, contents = _layout(segs, train_on_prompt=train_on_prompt, mask_history=mask_history)
            texts.append(text)
            spans_list.append(trained)
            contents_list.append(contents)
        if not texts:
            return []
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out: list[tuple[list[int], list[int]] | None] = []
        for ids, offsets, trained, contents in zip(enc["input_ids"], enc["offset_mapping"], spans_list, contents_list):
            ids = list(ids)
            starts = [o[0] for o in offsets]
            labels = [tok if _in_spans(s, trained) else IGNORE_INDEX for tok, s in zip(ids, starts)]
            out.append(_fit(ids, labels, starts, contents, cutoff_len, stats))
        return out

    def response_text(self, tokenizer, message: dict) -> str:
        """An assistant message as trained text: its content (and tool calls) plus the end-of-turn token."""
        segs = self.segments(tokenizer, [{"role": "user", "content": "x"}, message], None, None, False)
        return "".join(s.text for s in segs if s.kind == "response")

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Token ids that end an answer: the template's end-of-turn token(s) and the tokenizer's EOS."""
        ids: list[int] = []
        for text in self.stop_strings(tokenizer):
            if not text:
                continue
            tok = tokenizer.convert_tokens_to_ids(text)
            if isinstance(tok, int) and tok != getattr(tokenizer, "unk_token_id", None):
                ids.append(tok)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def parse_tool_calls(self, text: str) -> list[dict]:
        return parse_hermes_tool_calls(text) if self.supports_tools else []

    def tools_note(self, tokenizer) -> str | None:
        """Why tool definitions and calls are rendered in a format the user may not expect, if they are."""
        return None

    def tokenizer_problems(self, tokenizer) -> list[str]:
        """Reasons this template cannot be trained with this tokenizer (a stop token it cannot encode as one
        token: the model would never learn to stop). Empty when they fit."""
        return []

    def tokenizer_warnings(self, tokenizer) -> list[str]:
        """Problems, then softer signs that the template does not fit the tokenizer's own format."""
        return self.tokenizer_problems(tokenizer)

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse to train with a template whose stop tokens this tokenizer cannot encode (see docs/TRAINING.md)."""
        problems = self.tokenizer_problems(tokenizer)
        if problems:
            fitting = [name for name, t in TEMPLATES.items()
                       if name != self.name and not t.tokenizer_problems(tokenizer)]
            raise WorkbenchError(
                f"template {self.name!r} does not fit the tokenizer of {_tokenizer_label(tokenizer)}: "
                + "; ".join(problems)
                + ". The trained model would never learn to stop. Choose the model's own template (auto)"
                + (f" or one whose tokens this tokenizer has: {', '.join(fitting)}" if fitting else "")
            )

    def __repr__(self) -> str:
        return f"<Template {self.name}>"


def _tokenizer_label(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "this model")


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer encodes it as exactly one known token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None) and text != tokenizer.unk_token:
        return None
    return ids[0]


def _pieces(tokenizer, text: str) -> str:
    toks = tokenizer.tokenize(text)
    shown = ", ".join(repr(t) for t in toks[:10]) + (", …" if len(toks) > 10 else "")
    return f"{len(toks)} pieces ({shown})"


def _special_sequence(text: str, tokenizer) -> list[str]:
    """The tokenizer's special tokens in ``text``, in order."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    specials.discard("")
    if not specials:
        return []
    pattern = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    return re.findall(pattern, text)


def _shorten(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# A conversation that uses every part of a template, for comparing formats and probing jinja templates.
_PROBE_SYSTEM = "Probe system prompt."
_PROBE_MESSAGES = [
    {"role": "user", "content": "Probe question."},
    {"role": "assistant", "content": "Probe answer."},
    {"role": "user", "content": "Second probe question."},
]


def _layout(segs: list[Segment], *, train_on_prompt: bool, mask_history: bool):
    """Concatenate segments; return the text, trained char spans and message-content char spans."""
    last_round = max((s.round for s in segs if s.kind == "response"), default=-1)
    pos, trained, contents = 0, [], []
    text_parts = []
    for s in segs:
        end = pos + len(s.text)
        is_trained = (s.kind == "response" or train_on_prompt) and (not mask_history or s.round == last_round)
        if is_trained and end > pos:
            if trained and trained[-1][1] == pos:
                trained[-1] = (trained[-1][0], end)
            else:
                trained.append((pos, end))
        if s.kind in ("content", "response") and end > pos:
            contents.append((pos, end))
        text_parts.append(s.text)
        pos = end
    return "".join(text_parts), trained, contents


def _in_spans(pos: int, spans: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(spans, (pos, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= pos < spans[i][1]


def _fit(ids: list[int], labels: list[int], starts: list[int], contents: list[tuple[int, int]],
         cutoff_len: int | None, stats: dict | None):
    """Apply cutoff_len, shortening the prompt so that the first response is kept whenever it fits.

    The rule (docs/TRAINING.md, "Truncation"): the prompt keeps at least a quarter of ``cutoff_len`` (all
    of it when shorter, and never less than the template's own tokens); the first response gets the rest,
    so a response of up to three quarters of ``cutoff_len`` is always kept whole. The prompt is shortened
    from the end of its longest message texts (water-filling), never in the template's markup, so the
    model still sees a well-formed conversation. Whatever is still too long is cut at the end.
    """
    def count(key: str) -> None:
        if stats is not None:
            stats[key] = stats.get(key, 0) + 1

    first = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), None)
    if first is None:
        count("dropped")
        return None
    if not cutoff_len or len(ids) <= cutoff_len:
        return ids, labels
    run_end = first
    while run_end < len(labels) and labels[run_end] != IGNORE_INDEX:
        run_end += 1
    # Prompt tokens that can go: every token of a message text before the response but its first.
    candidates = []
    for a, b in contents:
        toks = [i for i in range(first) if a <= starts[i] < b]
        if toks:
            candidates.append(toks)
    removable = sum(len(t) - 1 for t in candidates)
    prompt_floor = min(first, max(first - removable, cutoff_len // 4))
    keep_response = min(run_end - first, cutoff_len - prompt_floor)
    if keep_response < 1:
        count("dropped")
        return None
    excess = first + keep_response - cutoff_len
    if excess > 0:  # never more than ``removable``: ``prompt_floor`` is at least the unremovable part
        remove: set[int] = set()
        need = excess
        while need > 0:
            candidates.sort(key=len, reverse=True)
            longest = candidates[0]
            target = len(candidates[1]) if len(candidates) > 1 else 1
            cut = max(1, min(need, len(longest) - max(target, 1)))
            if len(longest) - cut < 1:
                cut = len(longest) - 1
            remove.update(longest[len(longest) - cut:])
            candidates[0] = longest[: len(longest) - cut]
            need -= cut
        ids = [t for i, t in enumerate(ids) if i not in remove]
        labels = [t for i, t in enumerate(labels) if i not in remove]
        count("prompt_shortened")
    count("truncated")
    return ids[:cutoff_len], labels[:cutoff_len]


def _fill(fmt: str, tokenizer, content: str = "") -> str:
    # str.replace, not str.format: contents are full of braces (JSON, code).
    out = fmt.replace("{bos}", tokenizer.bos_token or "").replace("{eos}", tokenizer.eos_token or "")
    return out.replace("{content}", content)


@dataclass(kw_only=True)
class FormatTemplate(Template):
    """A template described by format strings; ``{content}``, ``{bos}`` and ``{eos}`` are substituted."""

    name: str
    description: str
    user_format: str
    assistant_prefix: str  # the generation prompt (not trained)
    assistant_suffix: str  # end of turn (trained)
    system_format: str = ""
    assistant_format: str = "{content}"
    turn_separator: str = ""  # after the end of turn, before the next message (not trained)
    prefix: str = ""  # once at the start, e.g. "{bos}"
    default_system: str = ""
    system_in_first_user: str | None = None  # fold the system prompt into the first user message
    tool_run_prefix: str = ""
    tool_format: str | None = None
    tool_run_suffix: str = ""
    stop_words: tuple[str, ...] = ()
    supports_tools: bool = False
    notes: str = field(default="", repr=False)

    def stop_strings(self, tokenizer) -> list[str]:
        return [_fill(w, tokenizer) for w in self.stop_words]

    def _formats(self) -> list[str]:
        return [f for f in (self.prefix, self.system_format, self.user_format, self.assistant_prefix,
                            self.assistant_format, self.assistant_suffix, self.turn_separator,
                            self.system_in_first_user or "", self.tool_run_prefix, self.tool_format or "",
                            self.tool_run_suffix, *self.stop_words) if f]

    def tokenizer_problems(self, tokenizer) -> list[str]:
        problems = []
        if "{eos}" in self.assistant_suffix and not tokenizer.eos_token:
            problems.append("it ends each answer with the end-of-sequence token, and this tokenizer has none")
        # Markers such as <|eot_id|> and the end of turn must each be one token of the vocabulary.
        markers = dict.fromkeys(m for f in self._formats() for m in re.findall(r"<\|[^<>|\s]+\|>", f))
        for word in self.stop_strings(tokenizer):
            if word:
                markers.setdefault(word, None)
        for marker in markers:
            if single_token_id(tokenizer, marker) is None:
                problems.append(f"it needs {marker!r} as one token, but this tokenizer splits it into "
                                f"{_pieces(tokenizer, marker)}")
        return problems

    def tokenizer_warnings(self, tokenizer) -> list[str]:
        warnings = self.tokenizer_problems(tokenizer)
        own = getattr(tokenizer, "chat_template", None)
        if warnings or not isinstance(own, str) or not own:
            return warnings
        for system in (_PROBE_SYSTEM, None):  # some templates refuse a system message
            msgs = ([{"role": "system", "content": system}] if system else []) + _PROBE_MESSAGES
            try:
                theirs = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except Exception:
                continue
            ours = self.render(tokenizer, _PROBE_MESSAGES, system=system)
            # Text may differ (dates, default prompts); the special tokens that frame the turns may not.
            if _special_sequence(theirs, tokenizer) != _special_sequence(ours, tokenizer):
                warnings.append(
                    f"template {self.name!r} renders a conversation as {_shorten(ours)!r}, but the tokenizer's own "
                    f"chat template as {_shorten(theirs)!r}: the model was trained on another format "
                    "(template auto uses its own)")
            break
        return warnings

    def _assistant_body(self, message: dict) -> str:
        content = message.get("content") or ""
        calls = message.get("tool_calls") or []
        if not calls:
            return content
        return content + ("\n" if content else "") + hermes_tool_calls_text(calls)

    def _system_text(self, system: str | None, tools: list[dict] | None) -> tuple[str, bool]:
        text = self.default_system if system is None else system
        show = system is not None or bool(self.default_system)
        if tools:
            head = text + "\n\n" if text else ""
            text = head + hermes_tools_text(tools)
            show = True
        return text, show

    def segments(self, tokenizer, messages, system=None, tools=None, add_generation_prompt=True):
        messages, system = split_system(messages, system)
        check_messages(messages, template=self.name)
        uses_tools = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if uses_tools and not self.supports_tools:
            raise WorkbenchError(
                f"template {self.name!r} has no tool-calling format; use qwen, chatml or smollm2 for tool data"
            )
        segs: list[Segment] = []
        rnd = 0

        def add(text: str, kind: str = "prompt") -> None:
            if text:
                segs.append(Segment(text, kind, rnd))

        def add_wrapped(fmt: str, content: str) -> None:
            # Split "<head>{content}<tail>" so the content is its own (shortenable) segment.
            head, _, tail = fmt.partition("{content}")
            add(_fill(head, tokenizer))
            add(content, "content")
            add(_fill(tail, tokenizer))

        add(_fill(self.prefix, tokenizer))
        sys_text, show_system = self._system_text(system, tools)
        fold_system = self.system_in_first_user is not None
        if show_system and not fold_system:
            add_wrapped(self.system_format, sys_text)
        for i, m in enumerate(messages):
            role, content = m["role"], m.get("content") or ""
            if role == "user":
                if i == 0 and fold_system and show_system and sys_text:
                    head, _, tail = self.user_format.partition("{content}")
                    sys_head, _, sys_tail = self.system_in_first_user.partition("{system}")
                    add(_fill(head, tokenizer))
                    add(sys_head)
                    add(sys_text, "content")
                    add(sys_tail)
                    add(content, "content")
                    add(_fill(tail, tokenizer))
                else:
                    add_wrapped(self.user_format, content)
            elif role == "assistant":
                add(_fill(self.assistant_prefix, tokenizer))
                body = _fill(self.assistant_format, tokenizer, self._assistant_body(m))
                add(body + _fill(self.assistant_suffix, tokenizer), "response")
                rnd += 1
                add(_fill(self.turn_separator, tokenizer))
            else:  # tool result
                first_of_run = i == 0 or messages[i - 1]["role"] != "tool"
                last_of_run = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
                if first_of_run:
                    add(_fill(self.tool_run_prefix, tokenizer))
                add_wrapped(self.tool_format or "{content}", content)
                if last_of_run:
                    add(_fill(self.tool_run_suffix, tokenizer))
        if add_generation_prompt:
            add(_fill(self.assistant_prefix, tokenizer))
        return segs


class JinjaTemplate(Template):
    """The tokenizer's own ``chat_template`` (``jinja``); what ``auto`` means for models not in the registry."""

    name = "jinja"
    description = "the tokenizer's own chat template (jinja)"

    def _check(self, tokenizer) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise WorkbenchError(
                f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template; "
                f"choose a named template ({', '.join(n for n in TEMPLATES if n != 'jinja')})"
            )

    # Always: a tokenizer template that ignores tools gets the Hermes format instead (see _hermes_fallback).
    supports_tools = True
    _tool_probe_cache: dict[str, tuple[bool, bool, bool]] = {}

    def tool_rendering(self, tokenizer) -> tuple[bool, bool, bool]:
        """Whether the tokenizer's template renders (tool definitions, assistant tool calls, tool results).

        Found by rendering probe conversations: many templates (SmolLM2's among them) silently drop
        ``tools`` and ``tool_calls``, which would train each tool-call turn as an empty answer.
        """
        self._check(tokenizer)
        key = tokenizer.chat_template
        if key in self._tool_probe_cache:
            return self._tool_probe_cache[key]
        question = {"role": "user", "content": "Probe question."}
        call = {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "wb_probe_call", "arguments": {"x": 1}}}]}
        tool = {"type": "function", "function": {"name": "wb_probe_definition", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}

        def renders(marker: str, msgs: list[dict], tools: list[dict] | None = None) -> bool:
            try:
                return marker in self._apply(tokenizer, msgs, tools, False)
            except Exception:  # a template that raises on a role or field does not support it
                return False

        result = (
            renders("wb_probe_definition", [question, {"role": "assistant", "content": "Probe answer."}], [tool]),
            renders("wb_probe_call", [question, call], [tool]),
            renders("wb_probe_result", [question, call, {"role": "tool", "content": "wb_probe_result"}], [tool]),
        )
        self._tool_probe_cache[key] = result
        return result

    def tools_note(self, tokenizer) -> str | None:
        if not getattr(tokenizer, "chat_template", None):
            return None
        missing = [what for what, ok in zip(("tool definitions", "tool calls", "tool results"),
                                            self.tool_rendering(tokenizer)) if not ok]
        if not missing:
            return None
        return (f"the chat template of {_tokenizer_label(tokenizer)} (template jinja) ignores {', '.join(missing)}; "
                "they are written in the Hermes format instead (<tools> in the system prompt, <tool_call> in the "
                "answer, <tool_response> in a user turn), which Chat and the API parse back. Choose a named "
                "template (qwen, chatml, smollm2) to set the format yourself")

    def _hermes_fallback(self, tokenizer, messages: list[dict], system: str | None, tools: list[dict] | None):
        """Rewrite the tool parts the tokenizer's template would drop as Hermes-format text."""
        uses_tools = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if not uses_tools:
            return messages, system, tools
        definitions, calls, results = self.tool_rendering(tokenizer)
        if tools and not definitions:
            head = system + "\n\n" if system else ""
            system = head + hermes_tools_text(tools)
            tools = None
        out: list[dict] = []
        for m in messages:
            if m["role"] == "assistant" and m.get("tool_calls") and not calls:
                content = m.get("content") or ""
                out.append({"role": "assistant",
                            "content": content + ("\n" if content else "") + hermes_tool_calls_text(m["tool_calls"])})
            elif m["role"] == "tool" and not results:
                block = "<tool_response>\n" + (m.get("content") or "") + "\n</tool_response>"
                if out and out[-1].get("_tool_run"):  # one user turn per run of results, as Qwen does
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block, "_tool_run": True})
            else:
                out.append(m)
        return [{k: v for k, v in m.items() if k != "_tool_run"} for m in out], system, tools

    @staticmethod
    def _hf_messages(messages: list[dict], system: str | None) -> list[dict]:
        out = [{"role": "system", "content": system}] if system is not None else []
        for m in messages:
            hm = {"role": m["role"], "content": m.get("content") or ""}
            if m.get("tool_calls"):
                hm["tool_calls"] = [
                    {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                    for c in m["tool_calls"]
                ]
            out.append(hm)
        return out

    def _apply(self, tokenizer, msgs, tools, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False, add_generation_prompt=gen)

    def stop_strings(self, tokenizer) -> list[str]:
        out = [tokenizer.eos_token or ""]
        chat_template = tokenizer.chat_template or ""
        for candidate in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            if candidate in chat_template and candidate in tokenizer.get_vocab():
                out.append(candidate)
        return out

    def segments(self, tokenizer, messages, system=None, tools=None, add_generation_prompt=True):
        self._check(tokenizer)
        messages, system = split_system(messages, system)
        check_messages(messages, template=self.name)
        messages, system, tools = self._hermes_fallback(tokenizer, messages, system, tools)
        msgs = self._hf_messages(messages, system)
        offset = 1 if system is not None else 0
        full = self._apply(tokenizer, msgs, tools, add_generation_prompt)
        stops = [s for s in self.stop_strings(tokenizer) if s]
        segs: list[Segment] = []
        pos, rnd = 0, 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._apply(tokenizer, msgs[: i + offset], tools, True)
            upto = self._apply(tokenizer, msgs[: i + offset + 1], tools, False)
            if not (upto.startswith(before) and full.startswith(upto) and len(before) >= pos):
                raise WorkbenchError(
                    f"the tokenizer's chat template renders earlier turns differently once later turns exist "
                    f"(assistant turn {rnd + 1}), so trained spans cannot be located; choose a named template "
                    f"({', '.join(n for n in TEMPLATES if n != 'jinja')})"
                )
            response = upto[len(before):]
            ends = [response.find(s) + len(s) for s in stops if s in response]
            end = min(ends) if ends else len(response)
            segs.extend(_content_segments(full[pos:len(before)], messages[:i], rnd))
            segs.append(Segment(response[:end], "response", rnd))
            pos = len(before) + end
            rnd += 1
        segs.extend(_content_segments(full[pos:], messages, rnd))
        return [s for s in segs if s.text]


def _content_segments(text: str, messages: list[dict], rnd: int) -> list[Segment]:
    """Split prompt text so that message contents found in it become their own segments (for shortening)."""
    segs, pos = [], 0
    for m in messages:
        content = m.get("content") or ""
        if len(content) < 16:
            continue
        at = text.find(content, pos)
        if at < 0:
            continue
        segs.append(Segment(text[pos:at], "prompt", rnd))
        segs.append(Segment(content, "content", rnd))
        pos = at + len(content)
    segs.append(Segment(text[pos:], "prompt", rnd))
    return segs


_CHATML_TOOLS = dict(
    tool_run_prefix="<|im_start|>user",
    tool_format="\n<tool_response>\n{content}\n</tool_response>",
    tool_run_suffix="<|im_end|>\n",
    supports_tools=True,
)


def _chatml(name: str, description: str, default_system: str = "") -> FormatTemplate:
    return FormatTemplate(
        name=name,
        description=description,
        system_format="<|im_start|>system\n{content}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>",
        turn_separator="\n",
        default_system=default_system,
        stop_words=("<|im_end|>",),
        **_CHATML_TOOLS,
    )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        _chatml("qwen", "ChatML with Qwen2.5's default system prompt and Hermes tool calls",
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        _chatml("chatml", "plain ChatML (<|im_start|>role … <|im_end|>), no default system prompt"),
        _chatml("smollm2", "ChatML with SmolLM2's default system prompt",
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        FormatTemplate(
            name="llama2", description="Llama-2 chat: [INST] … [/INST], <<SYS>> folded into the first turn",
            user_format="{bos}[INST] {content} [/INST]", assistant_prefix="", assistant_format=" {content} ",
            assistant_suffix="{eos}", system_in_first_user="<<SYS>>\n{system}\n<</SYS>>\n\n",
        ),
        FormatTemplate(
            name="llama3", description="Llama-3 instruct: header ids and <|eot_id|>",
            prefix="{bos}",
            system_format="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_suffix="<|eot_id|>", stop_words=("<|eot_id|>",),
        ),
        FormatTemplate(
            name="mistral", description="Mistral instruct: [INST] … [/INST], system folded into the first turn",
            prefix="{bos}", user_format="[INST] {content}[/INST]", assistant_prefix="",
            assistant_format=" {content}", assistant_suffix="{eos}", system_in_first_user="{system}\n\n",
        ),
        FormatTemplate(
            name="alpaca", description="Alpaca: ### Instruction / ### Response",
            system_format="{content}\n\n", user_format="### Instruction:\n{content}\n\n",
            assistant_prefix="### Response:\n", assistant_suffix="{eos}", turn_separator="\n\n",
            default_system="Below is an instruction that describes a task. "
                           "Write a response that appropriately completes the request.",
        ),
        FormatTemplate(
            name="default", description="plain Human: / Assistant: turns",
            system_format="System: {content}\n", user_format="Human: {content}\n",
            assistant_prefix="Assistant:", assistant_format=" {content}", assistant_suffix="{eos}",
            turn_separator="\n",
        ),
        JinjaTemplate(),
    ]
}


def template_names() -> list[str]:
    """Names for pickers: ``auto`` first, then every template."""
    return ["auto", *TEMPLATES]


def get_template(name: str) -> Template:
    key = (name or "").strip().lower()
    if key == "auto":
        return TEMPLATES["jinja"]
    if key not in TEMPLATES:
        raise WorkbenchError(f"unknown template {name!r}; choose from: {', '.join(template_names())}")
    return TEMPLATES[key]


def resolve_template(name: str | None, model_name_or_path: str | None = None) -> Template:
    """``auto`` → the registry default of the model, else the tokenizer's own jinja template."""
    key = (name or "auto").strip().lower()
    if key != "auto":
        return get_template(key)
    if model_name_or_path:
        default = default_template(model_name_or_path)
        if default != "auto":
            return get_template(default)
    return TEMPLATES["jinja"]


# ---- which template a model or adapter uses ------------------------------------------------------

def _recorded_template(directory: str, record: str) -> str | None:
    """The known template named by ``directory/record`` (a run or export record), or None."""
    try:
        data = json.loads((Path(str(directory).strip()).expanduser() / record).read_text(encoding="utf-8"))
        name = str(data.get("template") or "").strip().lower()
    except (OSError, ValueError, AttributeError):
        return None
    return name if name in TEMPLATES else None


def exported_template(name_or_path: str) -> str | None:
    """The chat template the adapter(s) of a merged model were trained with, from its ``workbench_export.json``
    (None when the directory holds no such record or it names no known template)."""
    return _recorded_template(name_or_path, EXPORT_RECORD)


def adapter_template(path: str) -> str | None:
    """The chat template an adapter was trained with (its ``workbench_run.json``; a merged-adapter directory
    carries one too), or None when it records no known template."""
    return _recorded_template(path, RUN_RECORD)


def default_template(name_or_path: str) -> str:
    """A merged model's training template, else the registry's template for the model, else "auto"."""
    recorded = exported_template(name_or_path) if name_or_path else None
    if recorded:
        return recorded
    info = lookup(name_or_path)
    return info.template if info else "auto"


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
