"""``python -m workbench api``: an OpenAI-compatible server for the base model and its adapters.

``GET /v1/models`` lists the base (under its model name; ``base`` works too) and every adapter by name.
``POST /v1/chat/completions`` answers with the one named in ``model``, streamed (SSE) or not, with
usage counts; bad requests get OpenAI-style error objects (``{"error": {message, type, param, code}}``)
with the matching HTTP status. Requests go through one :class:`BatchScheduler`: concurrent requests
with the same sampling settings are generated together in one batch, never interleaved.

Sampling follows the request: ``temperature`` omitted or 0 means greedy (deterministic); above 0 samples.
Extensions: ``top_k`` and ``repetition_penalty``.

Tools: ``tool_choice`` ``auto`` (the default with tools: the model decides), ``none`` (the tools stay out of the
prompt, so no call is ever returned), ``required`` and a named function ``{"type": "function", "function":
{"name": ...}}``. The last two CONSTRAIN generation, they never re-prompt: the answer is forced to start with the
Hermes call prefix ``<tool_call>\n{"name":`` (with the name and ``"arguments":`` when it is known), and every
following token is restricted to those that keep the text a valid call — a name among the tools, a JSON object
as arguments (valid JSON, not checked against the parameters' schema), then ``}\n</tool_call>`` and the end of
the answer — closing the JSON early enough to fit ``max_tokens``. So any model, even a random one, answers with
exactly one parseable call (``finish_reason`` ``tool_calls``); the forced text counts as completion tokens, and
``stop`` strings do not apply to it. A ``max_tokens`` too small for the shortest call is a 400. The deprecated
``functions`` / ``function_call`` fields map to ``tools`` / ``tool_choice``, and such requests are answered the
old way: ``message.function_call`` (one call) and ``finish_reason`` ``function_call`` instead of ``tool_calls``;
``function_call`` assistant messages and ``function`` role messages are accepted in the history.

Feedback: ``POST /v1/feedback`` records which of two (or more) answers is better as preference data for the rm /
dpo stages (:mod:`workbench.data.preferences`). A client compares models by sending the same messages to each
(one request per model) and then posts ``{"chosen_id": ID, "rejected_id": ID}`` (or ``"rejected_ids": [ID, ...]``;
optional ``"edited"``: a corrected text for the chosen answer); ``{"rejected_ids": [...]}`` without ``chosen_id``
notes that every answer was bad. The server keeps the last ``feedback_keep`` finished answers (conversation,
answer, model, sampling) in memory by their ``chatcmpl-...`` id; an id it does not hold is a 404.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import math
import os
import secrets
import sys
import threading
import time
import uuid
import weakref
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from workbench.config.base import OptionError, WorkbenchError, add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs

IGNORED_FIELDS = {"user", "metadata", "store", "parallel_tool_calls", "service_tier", "prediction"}
KNOWN_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
    "stop", "stream", "stream_options", "tools", "tool_choice", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "logprobs", "top_logprobs", "response_format", "logit_bias", "functions", "function_call",
} | IGNORED_FIELDS
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FEEDBACK_FIELDS = {"chosen_id", "rejected_id", "rejected_ids", "edited"}
FEEDBACK_KEEP = 1000  # finished answers remembered for POST /v1/feedback


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- who may connect ---------------------------------------------------------------------------------

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
INSECURE_FLAG = "--insecure-no-auth"


def is_loopback(host: str | None) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", 0.0.0.0, ::, a host name: reachable from elsewhere


def check_exposure(host: str | None, *, protected: bool, auth_flag: str, share: bool = False,
                   insecure: bool = False) -> str | None:
    """Refuse to serve beyond loopback (or over a public ``--share`` link) without a password or key.

    ``protected``: ``auth_flag`` (--auth, --api-key) was given. ``insecure`` (--insecure-no-auth) lets it
    through for people whose own proxy authenticates; the warning to print is returned.
    """
    reasons = []
    if share:
        reasons.append("--share makes a public link that anyone can open")
    if not is_loopback(host):
        reasons.append(f"--host {host or '(all interfaces)'} makes it reachable from other machines")
    if protected or not reasons:
        return None
    what = " and ".join(reasons)
    if insecure:
        return f"warning: {what}, with no {auth_flag} ({INSECURE_FLAG}): anyone who can reach it can use it"
    example = "--auth user:password (or --auth users.txt)" if auth_flag == "--auth" else f"{auth_flag} KEY"
    raise WorkbenchError(f"{what}, and no {auth_flag} is set: add {example}, or bind --host 127.0.0.1; if a proxy "
                         f"in front of it does the authentication, pass {INSECURE_FLAG}")


# -- request parsing ---------------------------------------------------------------------------------

def _number(body: dict, name: str, *, kind=float, lo=None, hi=None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):  # NaN / Infinity: Python's JSON reads them
        raise ApiError(400, f"Invalid '{name}': {value} is not a finite number.", param=name, code="invalid_value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        what = "an integer" if kind is int else "a number"
        raise ApiError(400, f"Invalid type for '{name}': expected {what}, but got {type(value).__name__}.",
                       param=name, code="invalid_type")
    value = kind(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ApiError(400, f"Invalid '{name}': {value} must be {bounds}.", param=name, code="invalid_value")
    return value


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"messages[{i}].content[{j}]: only text parts are supported, got {kind!r}.",
                               param=f"messages[{i}].content", code="invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts.",
                   param=f"messages[{i}].content", code="invalid_type")


def convert_messages(messages: Any) -> tuple[list[dict], str | None]:
    """OpenAI messages → our canonical conversation and the system prompt."""
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list of message objects.", param="messages", code="invalid_type")
    if not messages:
        raise ApiError(400, "'messages' must contain at least one message.", param="messages", code="empty_array")
    out: list[dict] = []
    system: str | None = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object.", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}.",
                           param=f"messages[{i}].role", code="invalid_value")
        content = _text(m.get("content"), i)
        if role in ("system", "developer"):
            if out:
                raise ApiError(400, f"messages[{i}]: a system message is only allowed before the conversation.",
                               param=f"messages[{i}].role", code="invalid_value")
            system = content if system is None else system + "\n\n" + content
            continue
        turn: dict = {"role": "tool" if role == "function" else role, "content": content}  # function: legacy tool
        if role == "assistant" and m.get("tool_calls"):
            turn["tool_calls"] = [_tool_call(c, i, j) for j, c in enumerate(m["tool_calls"])]
        elif role == "assistant" and m.get("function_call"):  # the deprecated form of one tool call
            turn["tool_calls"] = [_tool_call({"function": m["function_call"]}, i, 0, "function_call")]
        elif role == "user" and m.get("content") is None:
            raise ApiError(400, f"messages[{i}].content is required for a user message.",
                           param=f"messages[{i}].content", code="missing_required_parameter")
        out.append(turn)
    if not out:
        raise ApiError(400, "'messages' has only system messages; add a user message.", param="messages",
                       code="invalid_value")
    return out, system


def _tool_call(call: Any, i: int, j: int, field: str = "tool_calls") -> dict:
    where = f"messages[{i}].tool_calls[{j}]" if field == "tool_calls" else f"messages[{i}].{field}"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        need = "function.name" if field == "tool_calls" else "a name"
        raise ApiError(400, f"{where} needs {need}.", param=where, code="invalid_value")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            what = "function.arguments" if field == "tool_calls" else "arguments"
            raise ApiError(400, f"{where}.{what} is not valid JSON.", param=where, code="invalid_value") from None
    return {"name": fn["name"], "arguments": args}


def tool_fields(body: dict) -> tuple[Any, Any, bool]:
    """``tools`` and ``tool_choice`` of a request, the deprecated ``functions`` / ``function_call`` mapped to
    them; and whether the request used the deprecated fields (it is answered with ``function_call``)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    functions, function_call = body.get("functions"), body.get("function_call")
    legacy = functions is not None or function_call is not None
    if not legacy:
        return tools, choice, False
    if tools is not None or choice is not None:
        both = "functions" if functions is not None else "function_call"
        raise ApiError(400, "Use either 'tools' / 'tool_choice' or the deprecated 'functions' / 'function_call', "
                            "not both.", param=both, code="invalid_value")
    if functions is not None:
        if not isinstance(functions, list):
            raise ApiError(400, "'functions' must be a list of function objects.", param="functions",
                           code="invalid_type")
        tools = [{"type": "function", "function": f} for f in functions]
    if function_call is None or function_call in ("auto", "none"):
        choice = function_call
    elif isinstance(function_call, dict) and isinstance(function_call.get("name"), str) and function_call["name"]:
        choice = {"type": "function", "function": {"name": function_call["name"]}}
    else:
        raise ApiError(400, "'function_call' must be \"none\", \"auto\" or {\"name\": \"my_function\"}.",
                       param="function_call", code="invalid_value")
    return tools, choice, True


def tool_choice_of(choice: Any, tools: list[dict] | None, *, param: str) -> str | dict:
    """The validated choice: "auto", "none", "required" or ``{"name": ...}`` (a function among the tools)."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ApiError(400, f"Invalid '{param}': {choice!r} is not one of auto, none, required or a named "
                                "function {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                           param=param, code="invalid_value")
        if choice == "required" and not tools:
            raise ApiError(400, f"'{param}' required needs 'tools' to choose from.", param=param,
                           code="invalid_value")
        return choice
    fn = choice.get("function") if isinstance(choice, dict) else None
    if (not isinstance(choice, dict) or choice.get("type", "function") != "function" or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str) or not fn["name"]):
        kind = choice.get("type") if isinstance(choice, dict) else type(choice).__name__
        raise ApiError(400, f"Invalid '{param}': expected auto, none, required or {{\"type\": \"function\", "
                            f"\"function\": {{\"name\": ...}}}}, got {kind!r}.", param=param, code="invalid_value")
    name = fn["name"]
    names = [t["function"]["name"] for t in tools or ()]
    if name not in names:
        offered = f"the tools are: {', '.join(names)}" if names else "no tools were given"
        raise ApiError(400, f"Invalid '{param}': the function '{name}' is not among the tools ({offered}).",
                       param=param, code="invalid_value")
    return {"name": name}


class ChatRequest:
    """A validated /v1/chat/completions request."""

    def __init__(self, body: Any, engine, *, base_names: set[str], default_max_tokens: int):
        from workbench.infer.engine import ContextLengthError, ToolsNotSupportedError, parse_tools

        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0],
                           code="unknown_parameter")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
        self.model = model
        if model in base_names:
            self.variant = None
        elif model in engine.adapter_names:
            self.variant = model
        else:
            available = ", ".join([engine.loaded.label, *engine.adapter_names])
            raise ApiError(404, f"The model '{model}' does not exist; available: {available}.", param="model",
                           code="model_not_found")
        if "messages" not in body:
            raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                           code="missing_required_parameter")
        self.messages, self.system = convert_messages(body["messages"])
        n = _number(body, "n", kind=int, lo=1)
        if n not in (None, 1):
            raise ApiError(400, "Only n=1 is supported.", param="n", code="invalid_value")
        for name in ("frequency_penalty", "presence_penalty"):
            if _number(body, name, lo=-2.0, hi=2.0):
                raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' (1.0 = none).", param=name,
                               code="unsupported_parameter")
        if body.get("logprobs") or body.get("top_logprobs"):
            raise ApiError(400, "'logprobs' is not supported.", param="logprobs", code="unsupported_parameter")
        if body.get("logit_bias"):
            raise ApiError(400, "'logit_bias' is not supported.", param="logit_bias", code="unsupported_parameter")
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise ApiError(400, "Only response_format {\"type\": \"text\"} is supported.", param="response_format",
                           code="unsupported_parameter")
        max_tokens = _number(body, "max_completion_tokens", kind=int, lo=1)
        if max_tokens is None:
            max_tokens = _number(body, "max_tokens", kind=int, lo=1)
        self.explicit_max = max_tokens is not None
        temperature = _number(body, "temperature", lo=0.0, hi=2.0)
        top_p = _number(body, "top_p", lo=0.0, hi=1.0)
        top_k = _number(body, "top_k", kind=int, lo=0)
        rep = _number(body, "repetition_penalty", lo=0.5, hi=3.0)
        seed = _number(body, "seed", kind=int)
        if top_p == 0.0:
            raise ApiError(400, "Invalid 'top_p': 0 keeps no tokens; use a value above 0.", param="top_p",
                           code="invalid_value")
        do_sample = (temperature or 0) > 0 or (temperature is None and (top_p is not None or bool(top_k)))
        values = {"max_new_tokens": max_tokens or default_max_tokens, "do_sample": do_sample, "seed": seed,
                  "repetition_penalty": rep if rep is not None else 1.0, "system": self.system}
        if do_sample:
            values.update(temperature=temperature if temperature is not None else 1.0,
                          top_p=top_p if top_p is not None else 1.0, top_k=top_k if top_k is not None else 0)
        try:
            self.gen = from_mapping(GenerationArgs, values)
        except OptionError as exc:
            param = {"max_new_tokens": "max_tokens"}.get(exc.option, exc.option)
            raise ApiError(400, str(exc).replace("max_new_tokens", "max_tokens"), param=param,
                           code="invalid_value") from None
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                                 or not all(isinstance(s, str) and s for s in stop)):
            raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings.",
                           param="stop", code="invalid_value")
        self.stop = tuple(stop or ())
        self.stream = body.get("stream") or False
        if not isinstance(self.stream, bool):
            raise ApiError(400, "'stream' must be a boolean.", param="stream", code="invalid_type")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "'stream_options' must be an object.", param="stream_options", code="invalid_type")
        self.include_usage = bool(options.get("include_usage"))
        tools, tool_choice, self.legacy = tool_fields(body)
        tools_param = "functions" if self.legacy else "tools"
        if tools is not None and not isinstance(tools, list):
            raise ApiError(400, "'tools' must be a list of tool objects.", param="tools", code="invalid_type")
        try:
            tools = parse_tools(tools, source=tools_param)
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), param=tools_param, code="invalid_value") from None
        self.tool_choice = tool_choice_of(tool_choice, tools, param="function_call" if self.legacy else "tool_choice")
        self.tools = tools if self.tool_choice != "none" else None  # none: the tools stay out of the prompt
        # Prompt: template, tools support and context length checked here, before the request queues.
        try:
            self.prompt_ids, self.max_new_tokens = engine.encode(
                self.messages, system=self.system, tools=self.tools, max_new_tokens=self.gen.max_new_tokens,
                strict_length=self.explicit_max, variant=self.variant,
            )
        except ContextLengthError as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except ToolsNotSupportedError as exc:
            raise ApiError(400, str(exc), param=tools_param, code="invalid_value") from None
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_value") from None
        # required / a named function: the answer is forced to be a call (see force_tool_call).
        self.forced_text, self.forced_ids, self.constraint, self.forced_name = "", [], None, None
        self.gen_tokens = self.max_new_tokens
        if self.tool_choice not in ("auto", "none"):
            force_tool_call(self, engine)


# -- forced tool calls (tool_choice required / a named function) ---------------------------------------
#
# The answer is forced to start with the Hermes call prefix (appended to the prompt ids after the generation
# prompt), and a per-row constraint (RowSpec.constraint) lets through only tokens that keep the rest a valid
# call: a character-level automaton (ToolCallGrammar) checks each candidate token's text, and the shortest
# completion from the state it leads to must still fit the tokens left, so the call is always closed in time.

_WS = " \t\n\r"
_MAX_WS = 16         # longest run of whitespace allowed (a model must not pad a call with blanks forever)
_MAX_DEPTH = 16      # deepest nesting of objects and arrays in the arguments
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_NUMBER = {  # JSON number states: state -> {char: next state}
    "minus": {"0": "zero", **{d: "int" for d in "123456789"}},
    "zero": {".": "dot", "e": "exp_mark", "E": "exp_mark"},
    "int": {**{d: "int" for d in _DIGITS}, ".": "dot", "e": "exp_mark", "E": "exp_mark"},
    "dot": {d: "frac" for d in _DIGITS},
    "frac": {**{d: "frac" for d in _DIGITS}, "e": "exp_mark", "E": "exp_mark"},
    "exp_mark": {"+": "exp_sign", "-": "exp_sign", **{d: "exp" for d in _DIGITS}},
    "exp_sign": {d: "exp" for d in _DIGITS},
    "exp": {d: "exp" for d in _DIGITS},
}
_NUMBER_ENDS = frozenset({"zero", "int", "frac", "exp"})
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}

# A JSON state is (stack, mode, aux, ws): stack "o"/"a" per open object/array, the mode (what may come next),
# its detail (string escape, number state, rest of a literal) and the current whitespace run.
_JSON_START = ("", "start", None, 0)


def _json_close(stack: str) -> tuple:
    stack = stack[:-1]
    return (stack, "after", None, 0) if stack else ("", "end", None, 0)


def _json_value(stack: str, ch: str) -> tuple | None:
    if ch == '"':
        return (stack, "str", (False, ""), 0)
    if ch in "{[":
        if len(stack) >= _MAX_DEPTH:
            return None
        return (stack + "o", "key_or_end", None, 0) if ch == "{" else (stack + "a", "val_or_end", None, 0)
    if ch == "-" or ch in _DIGITS:
        return (stack, "num", {"-": "minus", "0": "zero"}.get(ch, "int"), 0)
    rest = _LITERALS.get(ch)
    return (stack, "lit", rest, 0) if rest else None


def json_step(state: tuple, ch: str) -> tuple | None:
    """The state after one more character of a JSON object, or None when the character cannot come next."""
    stack, mode, aux, ws = state
    if mode == "str":
        key, esc = aux
        if esc == "":
            if ch == '"':
                return (stack, "colon" if key else "after", None, 0)
            if ch == "\\":
                return (stack, "str", (key, "\\"), 0)
            return None if ord(ch) < 0x20 else state
        if esc == "\\":
            if ch in '"\\/bfnrt':
                return (stack, "str", (key, ""), 0)
            return (stack, "str", (key, 1), 0) if ch == "u" else None
        if ch not in _HEX:  # esc = n: the n-th of the four hex digits of \uXXXX comes next
            return None
        return (stack, "str", (key, "" if esc == 4 else esc + 1), 0)
    if mode == "num":
        nxt = _NUMBER[aux].get(ch)
        if nxt is not None:
            return (stack, "num", nxt, 0)
        return json_step((stack, "after", None, 0), ch) if aux in _NUMBER_ENDS else None
    if mode == "lit":
        if ch != aux[0]:
            return None
        return (stack, "lit", aux[1:], 0) if len(aux) > 1 else (stack, "after", None, 0)
    if mode == "end":
        return None
    if ch in _WS:
        return (stack, mode, aux, ws + 1) if ws < _MAX_WS else None
    if mode == "start":  # the arguments: an object
        return ("o", "key_or_end", None, 0) if ch == "{" else None
    if mode == "val":
        return _json_value(stack, ch)
    if mode == "val_or_end":
        return _json_close(stack) if ch == "]" else _json_value(stack, ch)
    if mode in ("key_or_end", "key"):
        if ch == '"':
            return (stack, "str", (True, ""), 0)
        return _json_close(stack) if ch == "}" and mode == "key_or_end" else None
    if mode == "colon":
        return (stack, "val", None, 0) if ch == ":" else None
    # after a value
    if ch == ",":
        return (stack, "key" if stack[-1] == "o" else "val", None, 0)
    return _json_close(stack) if ch == ("}" if stack[-1] == "o" else "]") else None


def json_closure(state: tuple) -> str:
    """The shortest text that completes the JSON object from this state."""
    stack, mode, aux, _ = state
    if mode == "start":
        return "{}"
    head = ""
    if mode == "val":
        head = "null"
    elif mode == "key":
        head = '"":null'
    elif mode == "colon":
        head = ":null"
    elif mode == "str":
        key, esc = aux
        head = ("" if esc == "" else "n" if esc == "\\" else "0" * (5 - esc)) + '"' + (":null" if key else "")
    elif mode == "num":
        head = "" if aux in _NUMBER_ENDS else "0"
    elif mode == "lit":
        head = aux
    return head + "".join("}" if c == "o" else "]" for c in reversed(stack))


class ToolCallGrammar:
    """What may follow the forced prefix: with ``names`` (``required`` among several tools) the prefix ends at
    ``{"name":`` and one of the names comes next, then ``, "arguments":``; without, the prefix already holds
    the name and ``"arguments":``. Then a JSON object, ``}`` and ``</tool_call>`` (whitespace allowed between).
    States are ``(phase, detail)``; :meth:`closure` is the shortest text from a state to a complete call."""

    def __init__(self, names: list[str] | None = None, texts: "TokenTexts | None" = None):
        phases: list[tuple[str, Any]] = []
        if names:
            # Each name as JSON; with \u escapes where the tokens cannot spell a character (a byte-level vocabulary
            # without a token for it): the name parses the same.
            spelt = [json.dumps(n, ensure_ascii=False) for n in names]
            targets = tuple(dict.fromkeys(
                t if texts is None or texts.greedy(t) is not None else json.dumps(n) for n, t in zip(names, spelt)))
            phases += [("ws", " "), ("names", targets), ("ws", ""), ("lit", ","), ("ws", " "),
                       ("lit", '"arguments"'), ("ws", ""), ("lit", ":")]
            self._targets = frozenset(targets)
            self._prefixes = frozenset(t[:k] for t in targets for k in range(1, len(t) + 1))
        phases += [("ws", " "), ("value", None), ("ws", ""), ("lit", "}"), ("ws", "\n"), ("lit", "</tool_call>")]
        self.phases = phases
        tails = [""]
        for kind, arg in reversed(phases):
            first = "{}" if kind == "value" else min(arg, key=len) if kind == "names" else arg
            tails.append(first + tails[-1])
        self._tails = tails[::-1]  # _tails[i]: the shortest text for phases i, i+1, ... from their start

    def _init(self, i: int):
        kind = self.phases[i][0] if i < len(self.phases) else None
        return {"ws": 0, "lit": 0, "names": "", "value": _JSON_START}.get(kind)

    def initial(self) -> tuple:
        return (0, self._init(0))

    def done(self, state: tuple) -> bool:
        return state[0] >= len(self.phases)

    def step(self, state: tuple, ch: str) -> tuple | None:
        i, sub = state
        while i < len(self.phases):
            kind, arg = self.phases[i]
            if kind == "ws":
                if ch in _WS and sub < _MAX_WS:
                    return (i, sub + 1)
                i += 1
                sub = self._init(i)
                continue
            if kind == "lit":
                if arg[sub] != ch:
                    return None
                return (i, sub + 1) if sub + 1 < len(arg) else (i + 1, self._init(i + 1))
            if kind == "names":
                typed = sub + ch
                if typed in self._targets:
                    return (i + 1, self._init(i + 1))
                return (i, typed) if typed in self._prefixes else None
            nxt = json_step(sub, ch)
            if nxt is None:
                return None
            return (i + 1, self._init(i + 1)) if nxt[1] == "end" else (i, nxt)
        return None

    def feed(self, state: tuple, text: str) -> tuple | None:
        for ch in text:
            state = self.step(state, ch)
            if state is None:
                return None
        return state

    def closure(self, state: tuple) -> str:
        i, sub = state
        if i >= len(self.phases):
            return ""
        kind, arg = self.phases[i]
        if kind == "ws":
            head = "" if sub else arg
        elif kind == "lit":
            head = arg[sub:]
        elif kind == "names":
            head = min((t for t in arg if t.startswith(sub)), key=len)[len(sub):]
        else:
            head = json_closure(sub)
        return head + self._tails[i + 1]


class TokenTexts:
    """Each token's text as it reads after other text (decoded after an anchor token, as the streamer decodes
    a whole answer; special tokens and partial UTF-8 characters: None), indexed by first character, and a
    greedy longest-match tokenisation of a given text."""

    def __init__(self, tokenizer):
        anchor = tokenizer.encode("a", add_special_tokens=False)
        head = tokenizer.decode(anchor, skip_special_tokens=True)
        size = len(tokenizer)
        texts = tokenizer.batch_decode([anchor + [i] for i in range(size)], skip_special_tokens=True)
        self.pieces: list[str | None] = []
        self.by_first: dict[str, list[int]] = {}
        self.ids: dict[str, int] = {}
        for i, text in enumerate(texts):
            piece = text[len(head):] if text.startswith(head) else ""
            if not piece or "\ufffd" in piece:
                self.pieces.append(None)
                continue
            self.pieces.append(piece)
            self.by_first.setdefault(piece[0], []).append(i)
            self.ids.setdefault(piece, i)
        self.longest = min(64, max((len(p) for p in self.ids), default=1))
        self._greedy: dict[str, list[int] | None] = {}

    def piece(self, token: int) -> str | None:
        return self.pieces[token] if 0 <= token < len(self.pieces) else None

    def greedy(self, text: str) -> list[int] | None:
        """Token ids spelling ``text`` (longest match first); None when some character has no token."""
        if text in self._greedy:
            return self._greedy[text]
        out: list[int] | None = []
        i = 0
        while i < len(text):
            for n in range(min(self.longest, len(text) - i), 0, -1):
                token = self.ids.get(text[i:i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:
                out = None
                break
        if len(self._greedy) > 100_000:  # closures repeat a lot; keep the cache bounded
            self._greedy.clear()
        self._greedy[text] = out
        return out


_TOKEN_TEXTS: "weakref.WeakKeyDictionary[Any, TokenTexts]" = weakref.WeakKeyDictionary()
_TOKEN_TEXTS_LOCK = threading.Lock()


def token_texts(tokenizer) -> TokenTexts:
    """The tokenizer's :class:`TokenTexts`, built once (about a second for a 150k vocabulary)."""
    with _TOKEN_TEXTS_LOCK:
        texts = _TOKEN_TEXTS.get(tokenizer)
        if texts is None:
            texts = _TOKEN_TEXTS[tokenizer] = TokenTexts(tokenizer)
        return texts


class ToolCallConstraint:
    """A row's token constraint (``RowSpec.constraint``): at each step only tokens that keep the answer a
    valid call AND leave room to close it within ``limit`` tokens; once the call is closed, only the stop
    tokens. ``keep``: how many of the likeliest valid tokens stay (1 for greedy decoding; more, so that
    sampling still samples)."""

    SCAN = 512  # likeliest tokens checked first; all tokens that can start here only when none of them fits

    def __init__(self, grammar: ToolCallGrammar, texts: TokenTexts, stop_ids: list[int], limit: int, keep: int = 1):
        self.grammar, self.texts, self.stop_ids = grammar, texts, list(stop_ids)
        self.limit, self.keep = limit, max(1, keep)
        self.state = grammar.initial()
        self.seen = 0
        self.broken = False  # a token it did not allow arrived (padding after the row ended): stop constraining

    def _fits(self, token: int, left: int) -> bool:
        piece = self.texts.piece(token)
        if piece is None:
            return False
        state = self.grammar.feed(self.state, piece)
        if state is None:
            return False
        rest = self.grammar.closure(state)
        if len(rest) <= left:  # every character the closure needs is at most one token
            return True
        ids = self.texts.greedy(rest)
        return ids is not None and len(ids) <= left

    def allowed(self, scores, left: int) -> list[int]:
        import torch

        if self.grammar.done(self.state):
            return self.stop_ids
        found = []
        top = torch.topk(scores.float(), min(self.SCAN, scores.shape[-1])).indices.tolist()
        for token in top:
            if self._fits(token, left):
                found.append(token)
                if len(found) >= self.keep:
                    return found
        if found:
            return found
        # None of the likeliest fits: every token that can start here, likeliest first.
        starts = [t for ch, tokens in self.texts.by_first.items() if self.grammar.step(self.state, ch) is not None
                  for t in tokens if t < scores.shape[-1]]
        if starts:
            order = torch.argsort(scores[starts].float(), descending=True).tolist()
            for k in order:
                if self._fits(starts[k], left):
                    found.append(starts[k])
                    if len(found) >= self.keep:
                        break
        if found:
            return found
        closing = self.texts.greedy(self.grammar.closure(self.state))  # out of room: close the call
        return closing[:1] if closing else self.stop_ids

    def __call__(self, generated: list[int], scores):
        import torch

        for token in generated[self.seen:]:
            self.seen += 1
            if self.broken or self.grammar.done(self.state):
                continue
            piece = self.texts.piece(token)
            state = None if piece is None else self.grammar.feed(self.state, piece)
            if state is None:
                self.broken = True
            else:
                self.state = state
        if self.broken:
            return scores
        allowed = self.allowed(scores, self.limit - len(generated) - 1)
        index = torch.tensor([t for t in allowed if t < scores.shape[-1]], dtype=torch.long, device=scores.device)
        masked = torch.full_like(scores, float("-inf"))
        masked[index] = scores[index]
        return masked


def force_tool_call(req: "ChatRequest", engine) -> None:
    """Set up a forced call on a validated request: the prefix ids after the prompt, the constraint, and the
    tokens left for the rest of the call (``max_tokens`` counts the forced prefix too)."""
    tokenizer = engine.loaded.tokenizer
    names = list(dict.fromkeys(t["function"]["name"] for t in req.tools))
    name = req.tool_choice["name"] if isinstance(req.tool_choice, dict) else names[0] if len(names) == 1 else None
    texts = token_texts(tokenizer)
    if name is not None:
        prefix = '<tool_call>\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments":'
        grammar = ToolCallGrammar()
    else:
        prefix = '<tool_call>\n{"name":'
        grammar = ToolCallGrammar(names, texts)
    ids = tokenizer.encode(prefix, add_special_tokens=False)
    shortest = texts.greedy(grammar.closure(grammar.initial()))
    if shortest is None:
        raise ApiError(400, f"tool_choice {req.tool_choice!r}: this tokenizer cannot spell a tool call.",
                       param="tool_choice", code="invalid_value")
    need = len(ids) + len(shortest)
    if req.max_new_tokens < need:
        raise ApiError(400, f"max_tokens is {req.max_new_tokens}, too few for a forced tool call: the shortest "
                            f"call takes {need} tokens; raise max_tokens.", param="max_tokens", code="invalid_value")
    req.forced_text, req.forced_ids, req.forced_name = prefix, ids, name
    req.gen_tokens = req.max_new_tokens - len(ids)
    req.constraint = ToolCallConstraint(grammar, texts, engine.stop_token_ids(), req.gen_tokens,
                                        keep=64 if req.gen.do_sample else 1)


# -- responses ---------------------------------------------------------------------------------------

def _tool_calls_json(calls: list[dict]) -> list[dict]:
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
            for c in calls]


def _function_call_json(calls: list[dict]) -> dict:
    """The deprecated ``function_call`` of a message: the first call."""
    return {"name": calls[0]["name"], "arguments": json.dumps(calls[0].get("arguments", {}), ensure_ascii=False)}


def _usage(row, forced: int = 0) -> dict:
    # A forced prefix sits in the prompt ids but is part of the answer: counted as completion tokens.
    prompt, completion = row.prompt_tokens - forced, row.completion_tokens + forced
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def answer(engine, row, req: "ChatRequest") -> tuple[str | None, list[dict]]:
    """The finished row's content and tool calls. A forced call is parsed from the forced prefix plus the
    generated text; if that is no valid call (the constraint should make that impossible) it is an error."""
    row.wait()
    if not req.forced_text:
        reply = engine.reply(row)
        if reply.tool_calls:
            return reply.content or None, reply.tool_calls
        return reply.text, []
    text = req.forced_text + row.text
    calls = [c for c in engine.template_for(req.variant).parse_tool_calls(text)
             if isinstance(c.get("arguments"), dict) and c["name"] in {t["function"]["name"] for t in req.tools}
             and (req.forced_name is None or c["name"] == req.forced_name)]
    if not calls:
        raise ApiError(500, f"the forced tool call is not valid ({row.finish_reason}): {text[:400]!r}",
                       type="server_error", code="invalid_tool_call")
    return None, calls[:1]


def _visible(text: str, tools: bool, final: bool) -> str:
    """What of the answer so far may be streamed as content: with tools, nothing from ``<tool_call>`` on
    (and not a tail that could be its start, until the end)."""
    if not tools:
        return text
    at = text.find("<tool_call>")
    if at >= 0:
        return text[:at]
    if not final:
        for k in range(min(len("<tool_call>") - 1, len(text)), 0, -1):
            if text.endswith("<tool_call>"[:k]):
                return text[:-k]
    return text


def sampling_of(req: "ChatRequest") -> dict:
    """What a request was generated with, as recorded with feedback."""
    out = {k: getattr(req.gen, k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k",
                                             "repetition_penalty", "seed")}
    if req.stop:
        out["stop"] = list(req.stop)
    if req.tool_choice not in ("auto", "none"):
        out["tool_choice"] = req.tool_choice
    return out


def feedback_ids(body: Any) -> tuple[str | None, list[str], str | None]:
    """A validated feedback body: (chosen id or None for "all bad", rejected ids, edited text)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(set(body) - FEEDBACK_FIELDS)
    if unknown:
        raise ApiError(400, f"Unrecognized feedback argument supplied: {', '.join(unknown)}; expected chosen_id, "
                            "rejected_id or rejected_ids, and optionally edited.", param=unknown[0],
                       code="unknown_parameter")
    chosen = body.get("chosen_id")
    if chosen is not None and (not isinstance(chosen, str) or not chosen):
        raise ApiError(400, "'chosen_id' must be the id of a chat completion.", param="chosen_id",
                       code="invalid_type")
    if "rejected_id" in body and "rejected_ids" in body:
        raise ApiError(400, "Give either 'rejected_id' or 'rejected_ids', not both.", param="rejected_ids",
                       code="invalid_value")
    rejected = body.get("rejected_ids") if "rejected_ids" in body else (
        [body["rejected_id"]] if "rejected_id" in body else [])
    param = "rejected_ids" if "rejected_ids" in body else "rejected_id"
    if not isinstance(rejected, list) or not all(isinstance(r, str) and r for r in rejected):
        raise ApiError(400, f"'{param}' must be {'a list of ids' if param == 'rejected_ids' else 'an id'} of chat "
                            "completions.", param=param, code="invalid_type")
    if not rejected:
        raise ApiError(400, "Missing required parameter: 'rejected_id' (or 'rejected_ids'): the answer(s) the chosen "
                            "one is better than.", param="rejected_id", code="missing_required_parameter")
    ids = ([chosen] if chosen else []) + rejected
    if len(set(ids)) != len(ids):
        raise ApiError(400, "Each answer may appear once: the same id was given twice.", param=param,
                       code="invalid_value")
    edited = body.get("edited")
    if edited is not None and (not isinstance(edited, str) or not edited.strip()):
        raise ApiError(400, "'edited' must be the corrected text of the chosen answer.", param="edited",
                       code="invalid_value")
    if edited is not None and chosen is None:
        raise ApiError(400, "'edited' corrects the chosen answer; give 'chosen_id' too.", param="edited",
                       code="invalid_value")
    return chosen, rejected, edited


def create_app(engine, *, api_key: str | None = None, max_batch: int = 8, default_max_tokens: int = 256,
               feedback: bool = True, dataset_dir: str | None = None, feedback_dataset: str | None = None,
               feedback_keep: int = FEEDBACK_KEEP):
    """``feedback``: keep finished answers for ``POST /v1/feedback``, which appends to the preference dataset
    ``feedback_dataset`` (default ``preferences``) in ``dataset_dir`` (default: the project's data/)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from workbench.data import preferences
    from workbench.infer.engine import BASE, BatchScheduler, RowSpec
    from workbench.paths import project_data_dir

    scheduler = BatchScheduler(engine, max_batch=max_batch)
    base_name = engine.loaded.label
    base_names = {base_name, "base"}
    created = int(time.time())
    feedback_name = preferences.check_name(feedback_dataset)
    recent: collections.OrderedDict[str, preferences.Answer] = collections.OrderedDict()  # id → finished answer
    recent_lock = threading.Lock()

    def remember(completion_id: str, req: "ChatRequest", content: str | None, calls: list[dict]) -> None:
        """Keep a finished answer for feedback (the oldest is forgotten beyond ``feedback_keep``)."""
        if not feedback or feedback_keep < 1:
            return
        message: dict[str, Any] = {"role": "assistant", "content": content or ""}
        if calls:
            message["tool_calls"] = [{"name": c["name"], "arguments": c.get("arguments", {})} for c in calls]
        answer_ = preferences.Answer(req.variant or BASE, [preferences.clean(m) for m in req.messages], message,
                                     sampling_of(req), req.system, req.tools, completion_id)
        with recent_lock:
            recent[completion_id] = answer_
            while len(recent) > feedback_keep:
                recent.popitem(last=False)

    def recalled(ids: list[str], params: list[str]) -> list:
        with recent_lock:
            found = [recent.get(i) for i in ids]
        for i, param, a in zip(ids, params, found):
            if a is None:
                raise ApiError(404, f"No answer with id '{i}' is held for feedback: this server keeps the last "
                                    f"{feedback_keep} answers since it started, by the 'id' of their chat "
                                    "completion.", param=param, code="response_not_found")
        return found
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="Workbench API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.scheduler = scheduler

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError):
        return error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error(ApiError(exc.status_code, message, code=code))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc):
        return error(ApiError(400, str(exc), code="invalid_value"))

    def given_key(request: Request) -> str:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    def authorized(request: Request) -> bool:
        given = given_key(request)
        return not api_key or (bool(given) and secrets.compare_digest(given.encode(), api_key.encode()))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if request.url.path != "/health" and not authorized(request):  # every route but /health needs the key
            what = "No API key provided" if not given_key(request) else "Incorrect API key provided"
            return error(ApiError(401, f"{what}. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"))
        return await call_next(request)

    def model_card(name: str, parent: str | None = None) -> dict:
        card = {"id": name, "object": "model", "created": created, "owned_by": "workbench"}
        if parent:
            card["parent"] = parent
        return card

    def cards() -> list[dict]:
        return [model_card(base_name), *(model_card(n, base_name) for n in engine.adapter_names)]

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": cards()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        for card in cards():
            if card["id"] == model_id or (model_id == "base" and card["id"] == base_name):
                return card
        raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")

    @app.get("/health")
    async def health(request: Request):
        # Liveness and batch counters for anyone; which model and adapters are served only with the key.
        names = {"model": base_name, "adapters": engine.adapter_names} if authorized(request) else {}
        return {"status": "ok", **names, **scheduler.stats()}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
        req = await asyncio.to_thread(ChatRequest, body, engine, base_names=base_names,
                                      default_max_tokens=default_max_tokens)
        # A forced call: its prefix follows the prompt, the constraint shapes the rest, stop strings do not apply.
        spec = RowSpec(req.prompt_ids + req.forced_ids, req.variant, req.gen_tokens,
                       () if req.forced_text else req.stop, label=req.model, tools=bool(req.tools),
                       constraint=req.constraint)
        row = scheduler.submit(spec, req.gen)
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if req.stream:
            return StreamingResponse(_stream(row, req, completion_id, now), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await asyncio.to_thread(row.wait)
        except WorkbenchError as exc:
            raise ApiError(400, str(exc)) from None
        except Exception as exc:
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None
        finally:
            if not row.done:  # the client went away
                row.cancel()
        content, calls = answer(engine, row, req)
        remember(completion_id, req, content, calls)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        finish = row.finish_reason if row.finish_reason in ("stop", "length") else "stop"
        if calls and req.legacy:  # the deprecated functions: one call, as function_call
            message["function_call"] = _function_call_json(calls)
            finish = "function_call"
        elif calls:
            message["tool_calls"] = _tool_calls_json(calls)
            finish = "tool_calls"
        return {"id": completion_id, "object": "chat.completion", "created": now, "model": req.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": _usage(row, len(req.forced_ids)), "system_fingerprint": None}

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        if not feedback:
            raise ApiError(404, "Feedback is off on this server (it was started with --no-feedback).",
                           code="feedback_off")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
        chosen_id, rejected_ids, edited = feedback_ids(body)
        params = (["chosen_id"] if chosen_id else []) + [
            "rejected_ids" if "rejected_ids" in body else "rejected_id"] * len(rejected_ids)
        answers = recalled(([chosen_id] if chosen_id else []) + rejected_ids, params)
        first = answers[0]
        for a, param in zip(answers[1:], params[1:]):
            if (a.prompt, a.system or "", a.tools) != (first.prompt, first.system or "", first.tools):
                raise ApiError(400, f"The answers '{first.id}' and '{a.id}' reply to different conversations "
                                    "(messages, system prompt or tools differ); compare answers to the same messages.",
                               param=param, code="conversation_mismatch")
        folder = dataset_dir or str(project_data_dir())
        try:
            if chosen_id:
                rows = preferences.pair_rows(first, answers[1:], edited=edited, source="api", base_model=base_name)
            else:
                row = preferences.both_bad_row(answers, source="api", base_model=base_name)
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None
        try:
            if chosen_id:
                saved = await asyncio.to_thread(preferences.save_rows, folder, feedback_name, rows)
            else:
                saved = await asyncio.to_thread(preferences.save_both_bad, folder, feedback_name, row)
        except WorkbenchError as exc:
            raise ApiError(409, str(exc), type="server_error", code="dataset_conflict") from None
        except OSError as exc:
            raise ApiError(500, f"could not write the feedback: {exc}", type="server_error") from None
        out = {"object": "feedback", "dataset": feedback_name, "file": saved.path.name, "rows": saved.rows,
               "total": saved.total, "registered": saved.registered}
        if chosen_id:
            out.update(chosen=first.model, rejected=[a.model for a in answers[1:]])
        else:
            out.update(verdict="all bad", trainable=False)
        return out

    async def _stream(row, req: ChatRequest, completion_id: str, now: int):
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices=True) -> str:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": now, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices
                    else [], "system_fingerprint": None}
            if req.include_usage:
                data["usage"] = usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        events = row._events
        text, sent = "", 0
        tools = bool(req.tools)
        forced = bool(req.forced_text)  # a forced call has no content to stream
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, payload = await asyncio.to_thread(events.get, True, 1.0)
                except Exception:  # queue.Empty: keep waiting (the request may be queued behind a batch)
                    continue
                if kind == "delta":
                    text += payload
                    visible = "" if forced else _visible(text, tools, final=False)
                    if len(visible) > sent:
                        yield chunk({"content": visible[sent:]})
                        sent = len(visible)
                    continue
                if kind == "error":
                    status = 400 if isinstance(payload, WorkbenchError) else 500
                    err = ApiError(status, f"generation failed: {payload}",
                                   type="invalid_request_error" if status == 400 else "server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                break
            try:
                content, calls = answer(engine, row, req)
            except ApiError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            remember(completion_id, req, content, calls)
            visible = "" if forced else _visible(text, tools, final=True)
            # Any text before a call was streamed already (visible stops at <tool_call>).
            if calls and req.legacy:
                yield chunk({"function_call": _function_call_json(calls)})
                finish = "function_call"
            elif calls:
                yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(_tool_calls_json(calls))]})
                finish = "tool_calls"
            else:
                if len(visible) > sent:
                    yield chunk({"content": visible[sent:]})
                finish = row.finish_reason if row.finish_reason in ("stop", "length") else "stop"
            yield chunk({}, finish)
            if req.include_usage:
                yield chunk({}, None, _usage(row, len(req.forced_ids)), choices=False)
            yield "data: [DONE]\n\n"
        finally:
            if not row.done:  # the client disconnected: stop generating its row
                row.cancel()

    return app


# -- the command -------------------------------------------------------------------------------------

def configure_api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model_name_or_path", default=argparse.SUPPRESS,
                        help="model alias, local directory or hub id (default: smollm2-135m-instruct)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="serve an adapter under NAME (repeatable); requests pick it with model=NAME")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("WORKBENCH_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $WORKBENCH_API_KEY; none = open, "
                             "allowed on loopback only)")
    parser.add_argument(INSECURE_FLAG, dest="insecure_no_auth", action="store_true",
                        help="allow a --host beyond loopback without --api-key (your own proxy authenticates)")
    parser.add_argument("--template", default="auto", help="chat template (default auto)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="most concurrent requests generated together in one batch")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="answer length when a request gives no max_tokens (cut to the context)")
    parser.add_argument("--dataset-dir", default=None,
                        help="where POST /v1/feedback keeps preference data (default: the project's data/)")
    parser.add_argument("--feedback-dataset", default=None, metavar="NAME",
                        help="the preference dataset POST /v1/feedback appends to: NAME.jsonl, registered in "
                             "dataset_info.json on first use (default: preferences)")
    parser.add_argument("--no-feedback", dest="feedback", action="store_false",
                        help="keep no answers in memory and turn POST /v1/feedback off")
    add_arguments(parser, ModelArgs, skip=("model_name_or_path", "adapter_name_or_path"))


def run_api(args) -> int:
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import load_for_chat
    from workbench.models.adapters import parse_adapter_specs

    # Beyond loopback only with a key, or when the user says a proxy in front authenticates.
    warning = check_exposure(args.host, protected=bool(args.api_key), auth_flag="--api-key",
                             insecure=getattr(args, "insecure_no_auth", False))
    values = {k: v for k, v in vars(args).items() if k in ModelArgs.__dataclass_fields__}
    model_args = from_mapping(ModelArgs, values)
    if not 1 <= args.port <= 65535:
        raise WorkbenchError(f"--port {args.port}: not a TCP port (1-65535)")
    if args.max_batch < 1:
        raise WorkbenchError(f"--max-batch {args.max_batch}: must be at least 1")
    if args.max_tokens < 1:
        raise WorkbenchError(f"--max-tokens {args.max_tokens}: must be at least 1")
    adapters = parse_adapter_specs(args.adapter)
    from workbench.data.preferences import check_name

    check_name(getattr(args, "feedback_dataset", None))
    from workbench.data.templates import resolve_template

    resolve_template(args.template, model_args.model_name_or_path)
    loaded = load_for_chat(model_args, adapters)
    engine = ChatEngine(loaded, args.template)
    app = create_app(engine, api_key=args.api_key, max_batch=args.max_batch, default_max_tokens=args.max_tokens,
                     feedback=getattr(args, "feedback", True), dataset_dir=getattr(args, "dataset_dir", None),
                     feedback_dataset=getattr(args, "feedback_dataset", None))
    import uvicorn

    names = ", ".join(engine.variants[1:]) or "none"
    print(f"Workbench API on http://{args.host}:{args.port}/v1 — model {loaded.label}, adapters: {names}"
          f"{', API key required' if args.api_key else ''}", file=sys.stderr, flush=True)
    for note in engine.notes(tools=True):  # templates per adapter, and how tools are rendered if a client sends them
        print(f"note: {note}", file=sys.stderr, flush=True)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
