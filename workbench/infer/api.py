"""``python -m workbench api``: an OpenAI-compatible server for the base model and its adapters.

``GET /v1/models`` lists the base (under its model name; ``base`` works too) and every adapter by name.
``POST /v1/chat/completions`` answers with the one named in ``model``, streamed (SSE) or not, with
usage counts; bad requests get OpenAI-style error objects (``{"error": {message, type, param, code}}``)
with the matching HTTP status. Requests are rows of the model's one scheduler (continuous batching): each joins
the running batch at the next decode step with its own sampling settings and leaves when it is done.

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
import functools
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
from typing import Annotated, Any, Callable, ClassVar, Literal

# FastAPI resolves the routes' annotations (Request, the body models) in this module's namespace.
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (AfterValidator, BaseModel, BeforeValidator, Field, StrictBool, StrictStr, ValidationError,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workbench.config.base import OptionError, WorkbenchError, add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.data import preferences, records
from workbench.infer.engine import BASE, ContextLengthError, RowSpec, ToolsNotSupportedError
from workbench.paths import default_dataset_dir

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


# -- request bodies ----------------------------------------------------------------------------------
#
# Each body is a pydantic model that FastAPI validates before the route runs; what fails becomes an OpenAI-style
# 400 naming the field by its path (``messages[1].content``): see request_error. Our own checks raise
# refused(code, message), where ``{param}`` in the message stands for that path.

PARAM = "{param}"
# The codes refused() is given: their messages are complete but for {param}.
OUR_CODES = frozenset({"invalid_json", "invalid_value", "invalid_type", "unsupported_parameter", "empty_array",
                       "missing_required_parameter", "unknown_parameter"})
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}
_EXPECTED = {"list_type": "a list", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "string_type": "a string", "bool_type": "a boolean"}


def refused(code: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error for a validator to raise, answered as a 400 with ``code``. In ``message``, ``{param}``
    stands for the field's path (or ``context["param"]``, another field to name instead) and other ``{key}``s
    are filled from ``context``: a client's text goes there, never into ``message`` itself."""
    return PydanticCustomError(code, message, context or None)


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def field_path(loc: tuple) -> str:
    """pydantic's error location as OpenAI names the field: ("body", "messages", 1, "content") →
    ``messages[1].content``."""
    path = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def request_error(errors: list[dict]) -> ApiError:
    """The 400 for a request body that failed validation: its first error, naming the field."""
    err = errors[0]
    kind, ctx = err["type"], err.get("ctx") or {}
    param = ctx.get("param") or field_path(err["loc"])
    if kind == "json_invalid" or (kind == "missing" and not param):  # not JSON, or no body at all
        return ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    if kind in OUR_CODES:
        return ApiError(400, err["msg"].replace(PARAM, param), param=param or None, code=kind)
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind in _EXPECTED:
        return ApiError(400, f"'{param}' must be {_EXPECTED[kind]}, not {json_type(err['input'])}.", param=param,
                        code="invalid_type")
    if kind == "literal_error":
        return ApiError(400, f"Invalid '{param}': {err['input']!r} is not one of {ctx['expected']}.", param=param,
                        code="invalid_value")
    return ApiError(400, f"Invalid '{param}': {err['msg']}.", param=param, code="invalid_value")


def validated(model: type[BaseModel], data: Any):
    """``data`` as ``model``, or the same 400 that FastAPI's validation of a route's body gives."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc.errors()) from None


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False) -> BeforeValidator:
    """A JSON number in [lo, hi] (``integer``: an integral one, 3.0 counts). Not a boolean or a string, and not NaN
    or Infinity, which Python's JSON reads."""

    def check(value: Any) -> int | float | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            raise refused("invalid_value", "Invalid '{param}': {value} is not a finite number.", value=value)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (integer and not float(value).is_integer())):
            raise refused("invalid_type", "Invalid type for '{param}': expected {what}, but got {got}.",
                          what="an integer" if integer else "a number", got=json_type(value))
        value = int(value) if integer else float(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise refused("invalid_value", "Invalid '{param}': {value} must be {bounds}.", value=value, bounds=bounds)
        return value

    return BeforeValidator(check)


def refuse_when(test: Callable[[Any], bool], code: str, message: str) -> AfterValidator:
    """Refuse a given value that passes ``test``."""

    def check(value: Any) -> Any:
        if value is not None and test(value):
            raise refused(code, message)
        return value

    return AfterValidator(check)


def _joined_text(content: Any) -> Any:
    """Message content: a string or a list of text parts (joined); None stays None."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise refused("invalid_type", "{param} must be a string or a list of text parts.")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise refused("invalid_value", "{param}[{index}]: only text parts are supported, got {kind}.", index=j,
                          kind=repr(kind))
    return "".join(part["text"] for part in content)


def _call_arguments(arguments: Any) -> Any:
    try:
        return records.call_arguments(arguments, strict=True)
    except ValueError:
        raise refused("invalid_value", "{param} is not valid JSON.") from None


def _tool_definitions(tools: list[dict] | None) -> list[dict] | None:
    try:
        return records.parse_tools(tools)
    except ValueError as exc:
        raise refused("invalid_value", "{param}: {problem}", problem=str(exc)) from None


def _tool_choice(choice: Any) -> Any:
    """"auto", "none", "required", or a named function ``{"type": "function", "function": {"name": ...}}`` as
    ``{"name": ...}``."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, str):
        raise refused("invalid_value", "Invalid '{param}': {choice} is not one of auto, none, required or a named "
                                       "function {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                      choice=repr(choice))
    fn = choice.get("function") if isinstance(choice, dict) else None
    if (not isinstance(fn, dict) or choice.get("type", "function") != "function"
            or not isinstance(fn.get("name"), str) or not fn["name"]):
        kind = choice.get("type") if isinstance(choice, dict) else type(choice).__name__
        raise refused("invalid_value", "Invalid '{param}': expected auto, none, required or {\"type\": \"function\", "
                                       "\"function\": {\"name\": ...}}, got {kind}.", kind=repr(kind))
    return {"name": fn["name"]}


def _function_call(choice: Any) -> Any:
    """The deprecated ``function_call``: "auto", "none" or ``{"name": ...}``."""
    if choice is None or choice in ("auto", "none"):
        return choice
    if isinstance(choice, dict) and isinstance(choice.get("name"), str) and choice["name"]:
        return {"name": choice["name"]}
    raise refused("invalid_value", "'{param}' must be \"none\", \"auto\" or {\"name\": \"my_function\"}.")


def _among_tools(choice: Any, tools: list[dict] | None) -> Any:
    """A choice the tools allow: ``required`` needs some, a named function must be one of them."""
    if choice == "required" and not tools:
        raise refused("invalid_value", "'{param}' required needs 'tools' to choose from.")
    names = [t["function"]["name"] for t in tools or ()]
    if isinstance(choice, dict) and choice["name"] not in names:
        offered = f"the tools are: {', '.join(names)}" if names else "no tools were given"
        raise refused("invalid_value", "Invalid '{param}': the function '{name}' is not among the tools ({offered}).",
                      name=choice["name"], offered=offered)
    return choice


def _completion_id(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value):
        raise refused("invalid_type", "'{param}' must be the id of a chat completion.")
    return value


def _completion_ids(value: Any) -> Any:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
        raise refused("invalid_type", "'{param}' must be a list of ids of chat completions.")
    return value


def _corrected_text(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise refused("invalid_value", "'{param}' must be the corrected text of the chosen answer.")
    return value


ToolDefinitions = Annotated[list[dict] | None, AfterValidator(_tool_definitions)]
Penalty = Annotated[float | None, number(-2.0, 2.0),
                    refuse_when(bool, "unsupported_parameter", "'{param}' is not supported; use 'repetition_penalty' "
                                                               "(1.0 = none).")]
Unsupported = Annotated[Any, refuse_when(bool, "unsupported_parameter", "'{param}' is not supported.")]
CompletionId = Annotated[str | None, BeforeValidator(_completion_id)]


class RequestBody(BaseModel):
    """A JSON object; unknown fields are refused all together, named as OpenAI does."""

    kind: ClassVar[str] = "request"  # Unrecognized {kind} argument supplied
    expected: ClassVar[str] = ""     # and what that message adds

    @model_validator(mode="before")
    @classmethod
    def _an_object_of_known_fields(cls, data: Any) -> Any:
        if isinstance(data, bytes):  # FastAPI reads only a body sent as JSON; like OpenAI we read any
            try:
                data = json.loads(data)
            except ValueError:
                raise refused("invalid_json", "We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise refused("invalid_type", "The request body must be a JSON object.")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise refused("unknown_parameter", "Unrecognized {kind} argument supplied: {names}{expected}",
                          kind=cls.kind, names=", ".join(unknown), expected=cls.expected, param=unknown[0])
        return data


class FunctionCall(BaseModel):
    """A call in the history: the function's name and its arguments (an object, or JSON text)."""

    name: StrictStr
    arguments: Annotated[Any, BeforeValidator(_call_arguments)] = Field(default_factory=dict)


class ToolCall(BaseModel):
    function: FunctionCall


class Message(BaseModel):
    """One message; fields we have no use for (name, tool_call_id, refusal...) are ignored."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str | None, BeforeValidator(_joined_text), Field(validate_default=True)] = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # the deprecated form of one tool call

    @field_validator("content")
    @classmethod
    def _user_says_something(cls, content: str | None, info: ValidationInfo) -> str | None:
        if content is None and info.data.get("role") == "user":
            raise refused("missing_required_parameter", "{param} is required for a user message.")
        return content

    @property
    def is_system(self) -> bool:
        return self.role in ("system", "developer")

    def turn(self) -> dict:
        """As a turn of our conversations: a ``function`` message is a tool turn, calls are {"name", "arguments"}."""
        turn: dict[str, Any] = {"role": "tool" if self.role == "function" else self.role, "content": self.content or ""}
        calls = [c.function for c in self.tool_calls or ()] or ([self.function_call] if self.function_call else [])
        if self.role == "assistant" and calls:
            turn["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in calls]
        return turn


class ChatBody(RequestBody):
    """The body of POST /v1/chat/completions. Sampling numbers are checked here; the model, the prompt and what
    the tools need of the template are checked against the engine by :class:`ChatRequest`."""

    model: Annotated[StrictStr, Field(min_length=1)]
    messages: list[Message]
    max_completion_tokens: Annotated[int | None, number(1, integer=True)] = None
    max_tokens: Annotated[int | None, number(1, integer=True)] = None
    temperature: Annotated[float | None, number(0.0, 2.0)] = None
    top_p: Annotated[float | None, number(0.0, 1.0),
                     refuse_when(lambda p: p == 0, "invalid_value", "Invalid '{param}': 0 keeps no tokens; use a "
                                                                    "value above 0.")] = None
    top_k: Annotated[int | None, number(0, integer=True)] = None
    repetition_penalty: Annotated[float | None, number(0.5, 3.0)] = None
    seed: Annotated[int | None, number(integer=True)] = None
    n: Annotated[int | None, number(1, integer=True),
                 refuse_when(lambda n: n != 1, "invalid_value", "Only n=1 is supported.")] = None
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logprobs: Unsupported = None
    top_logprobs: Unsupported = None
    logit_bias: Unsupported = None
    response_format: Annotated[Any, refuse_when(lambda f: not isinstance(f, dict) or f.get("type") != "text",
                                                "unsupported_parameter",
                                                "Only response_format {\"type\": \"text\"} is supported.")] = None
    stop: list[str] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    ignore_eos: StrictBool | None = None  # vLLM's extension: generate max_tokens, through end-of-turn tokens
    tools: ToolDefinitions = None
    tool_choice: Annotated[str | dict | None, BeforeValidator(_tool_choice)] = None
    functions: ToolDefinitions = None  # deprecated: tools and tool_choice
    function_call: Annotated[str | dict | None, BeforeValidator(_function_call)] = None
    # accepted and ignored
    user: Any = None
    metadata: Any = None
    store: Any = None
    parallel_tool_calls: Any = None
    service_tier: Any = None
    prediction: Any = None

    @field_validator("messages")
    @classmethod
    def _a_conversation(cls, messages: list[Message]) -> list[Message]:
        if not messages:
            raise refused("empty_array", "'{param}' must contain at least one message.")
        talk = [i for i, m in enumerate(messages) if not m.is_system]
        if not talk:
            raise refused("invalid_value", "'{param}' has only system messages; add a user message.")
        late = next((i for i, m in enumerate(messages) if i > talk[0] and m.is_system), None)
        if late is not None:
            raise refused("invalid_value", "messages[{index}]: a system message is only allowed before the "
                                           "conversation.", index=late, param=f"messages[{late}].role")
        return messages

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, stop: Any) -> Any:
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                                 or not all(isinstance(s, str) and s for s in stop)):
            raise refused("invalid_value", "'{param}' must be a non-empty string or a list of up to 4 non-empty "
                                           "strings.")
        return stop

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: Any, info: ValidationInfo) -> Any:
        return _among_tools(choice, info.data.get("tools"))

    @field_validator("functions", "function_call")
    @classmethod
    def _legacy_alone(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and (info.data.get("tools") is not None or info.data.get("tool_choice") is not None):
            raise refused("invalid_value", "Use either 'tools' / 'tool_choice' or the deprecated 'functions' / "
                                           "'function_call', not both.")
        return _among_tools(value, info.data.get("functions")) if info.field_name == "function_call" else value

    @property
    def legacy(self) -> bool:
        """Whether the deprecated functions / function_call were used (the answer then uses function_call)."""
        return self.functions is not None or self.function_call is not None

    def conversation(self) -> tuple[list[dict], str | None]:
        """Our canonical turns, and the system prompt (the system and developer messages, joined)."""
        system = [m.content or "" for m in self.messages if m.is_system]
        return [m.turn() for m in self.messages if not m.is_system], "\n\n".join(system) if system else None

    def offered_tools(self) -> tuple[str | dict, list[dict] | None]:
        """The tool choice ("auto" with tools, else "none", unless one was given) and the tools for the prompt:
        with "none" they stay out of it."""
        tools = self.functions if self.legacy else self.tools
        choice = (self.function_call if self.legacy else self.tool_choice) or ("auto" if tools else "none")
        return choice, tools if choice != "none" else None

    def max_tokens_asked(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class FeedbackBody(RequestBody):
    """The body of POST /v1/feedback: which answer is better than which (or that all were bad)."""

    kind: ClassVar[str] = "feedback"
    expected: ClassVar[str] = "; expected chosen_id, rejected_id or rejected_ids, and optionally edited."

    chosen_id: CompletionId = None
    rejected_id: CompletionId = None
    rejected_ids: Annotated[list[str] | None, BeforeValidator(_completion_ids)] = None
    edited: Annotated[str | None, BeforeValidator(_corrected_text)] = None

    @model_validator(mode="after")
    def _a_judgement(self) -> "FeedbackBody":
        if self.rejected_id is not None and self.rejected_ids is not None:
            raise refused("invalid_value", "Give either 'rejected_id' or 'rejected_ids', not both.",
                          param="rejected_ids")
        if not self.rejected:
            raise refused("missing_required_parameter", "Missing required parameter: 'rejected_id' (or "
                                                        "'rejected_ids'): the answer(s) the chosen one is better than.",
                          param="rejected_id")
        if len(set(self.ids)) != len(self.ids):
            raise refused("invalid_value", "Each answer may appear once: the same id was given twice.",
                          param=self.params[-1])
        if self.edited is not None and self.chosen_id is None:
            raise refused("invalid_value", "'edited' corrects the chosen answer; give 'chosen_id' too.",
                          param="edited")
        return self

    @property
    def rejected(self) -> list[str]:
        return self.rejected_ids if self.rejected_ids is not None else [self.rejected_id] if self.rejected_id else []

    @property
    def ids(self) -> list[str]:
        """The answers judged: the chosen one (if any) first."""
        return ([self.chosen_id] if self.chosen_id else []) + self.rejected

    @property
    def params(self) -> list[str]:
        """The field that named each of :attr:`ids`."""
        rejected = "rejected_ids" if self.rejected_ids is not None else "rejected_id"
        return (["chosen_id"] if self.chosen_id else []) + [rejected] * len(self.rejected)


# -- a request, checked against the engine -------------------------------------------------------------

def served_variant(engine, model: str, base_names: set[str]) -> str | None:
    """The adapter a request's ``model`` names (None: the base model); 404 for a name not served."""
    if model in base_names:
        return None
    if model in engine.adapter_names:
        return model
    available = ", ".join([engine.loaded.label, *engine.adapter_names])
    raise ApiError(404, f"The model '{model}' does not exist; available: {available}.", param="model",
                   code="model_not_found")


def generation_args(body: ChatBody, max_new_tokens: int, system: str | None) -> GenerationArgs:
    """Sampling as asked: temperature omitted or 0 is greedy, unless top_p or top_k alone ask for sampling."""
    temperature, top_p, top_k, penalty = body.temperature, body.top_p, body.top_k, body.repetition_penalty
    do_sample = (temperature or 0) > 0 or (temperature is None and (top_p is not None or bool(top_k)))
    values = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": body.seed,
              "repetition_penalty": penalty if penalty is not None else 1.0, "system": system}
    if do_sample:
        values.update(temperature=temperature if temperature is not None else 1.0,
                      top_p=top_p if top_p is not None else 1.0, top_k=top_k if top_k is not None else 0)
    try:
        return from_mapping(GenerationArgs, values)
    except OptionError as exc:
        param = {"max_new_tokens": "max_tokens"}.get(exc.option, exc.option)
        raise ApiError(400, str(exc).replace("max_new_tokens", "max_tokens"), param=param,
                       code="invalid_value") from None


class ChatRequest:
    """A /v1/chat/completions request ready to generate: its body validated (:class:`ChatBody`, or a dict to
    validate), its model served, its prompt encoded (template, tools support and context length checked before
    the request queues) and, for tool_choice ``required`` or a named function, its forced call set up."""

    def __init__(self, body: ChatBody | Any, engine, *, base_names: set[str], default_max_tokens: int):
        if not isinstance(body, ChatBody):
            body = validated(ChatBody, body)
        self.model, self.variant = body.model, served_variant(engine, body.model, base_names)
        self.messages, self.system = body.conversation()
        asked = body.max_tokens_asked()
        self.explicit_max = asked is not None
        self.gen = generation_args(body, asked or default_max_tokens, self.system)
        self.stop = tuple(body.stop or ())
        self.stream = bool(body.stream)
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))
        self.legacy = body.legacy
        self.tool_choice, self.tools = body.offered_tools()
        self.prompt_ids, self.max_new_tokens = self._encode(engine, tools_param="functions" if self.legacy else "tools")
        # required / a named function: the answer is forced to be a call (see force_tool_call).
        self.forced_text, self.forced_ids, self.constraint, self.forced_name = "", [], None, None
        self.gen_tokens = self.max_new_tokens
        if self.tool_choice not in ("auto", "none"):
            force_tool_call(self, engine)

    def _encode(self, engine, *, tools_param: str) -> tuple[list[int], int]:
        try:
            return engine.encode(self.messages, system=self.system, tools=self.tools,
                                 max_new_tokens=self.gen.max_new_tokens, strict_length=self.explicit_max,
                                 variant=self.variant)
        except ContextLengthError as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except ToolsNotSupportedError as exc:
            raise ApiError(400, str(exc), param=tools_param, code="invalid_value") from None
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_value") from None


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


def completion_message(row, req: ChatRequest, content: str | None, calls: list[dict]) -> tuple[dict, str]:
    """The answer as a chat completion's message, and its finish_reason."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls and req.legacy:  # the deprecated functions: one call, as function_call
        message["function_call"] = _function_call_json(calls)
        return message, "function_call"
    if calls:
        message["tool_calls"] = _tool_calls_json(calls)
        return message, "tool_calls"
    return message, row.finish_reason if row.finish_reason in ("stop", "length") else "stop"


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class AnswerMemory:
    """The last ``keep`` finished answers by their completion id, for POST /v1/feedback (0 keeps none)."""

    def __init__(self, keep: int):
        self.keep = keep
        self._answers: collections.OrderedDict[str, preferences.Answer] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, completion_id: str, req: ChatRequest, content: str | None, calls: list[dict]) -> None:
        if self.keep < 1:
            return
        message: dict[str, Any] = {"role": "assistant", "content": content or ""}
        if calls:
            message["tool_calls"] = [{"name": c["name"], "arguments": c.get("arguments", {})} for c in calls]
        answer_ = preferences.Answer(req.variant or BASE, [preferences.clean(m) for m in req.messages], message,
                                     sampling_of(req), req.system, req.tools, completion_id)
        with self._lock:
            self._answers[completion_id] = answer_
            while len(self._answers) > self.keep:
                self._answers.popitem(last=False)

    def recall(self, ids: list[str], params: list[str]) -> list[preferences.Answer]:
        """The answers with these ids; 404 naming the ``param`` that gave an id not held."""
        with self._lock:
            found = [self._answers.get(i) for i in ids]
        for i, param, a in zip(ids, params, found):
            if a is None:
                raise ApiError(404, f"No answer with id '{i}' is held for feedback: this server keeps the last "
                                    f"{self.keep} answers since it started, by the 'id' of their chat completion.",
                               param=param, code="response_not_found")
        return found


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # 400: a body FastAPI could not read (not UTF-8)
    code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code))


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request_error(list(exc.errors())))


class ApiServer:
    """The routes and what they share: the engine (its scheduler batches every request), the names served, the API
    key and the answers kept for feedback."""

    def __init__(self, engine, *, api_key: str | None, max_batch: int, default_max_tokens: int, feedback: bool,
                 dataset_dir: str | None, feedback_dataset: str | None, feedback_keep: int):
        self.engine, self.api_key, self.default_max_tokens = engine, api_key, default_max_tokens
        engine.set_max_rows(max_batch)
        self.base_name = engine.loaded.label
        self.base_names = {self.base_name, "base"}
        self.created = int(time.time())
        self.dataset_dir = dataset_dir
        self.feedback_name = preferences.check_name(feedback_dataset)
        self.answers = AnswerMemory(feedback_keep if feedback else 0)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        yield
        self.engine.close("the server is shutting down")

    # -- who may call --------------------------------------------------------------------------------

    @staticmethod
    def given_key(request: Request) -> str:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    def authorized(self, request: Request) -> bool:
        given = self.given_key(request)
        return not self.api_key or (bool(given) and secrets.compare_digest(given.encode(), self.api_key.encode()))

    async def check_key(self, request: Request, call_next):
        if request.url.path != "/health" and not self.authorized(request):  # every route but /health needs the key
            what = "No API key provided" if not self.given_key(request) else "Incorrect API key provided"
            return error_response(ApiError(401, f"{what}. Send it as 'Authorization: Bearer KEY'.",
                                           code="invalid_api_key"))
        return await call_next(request)

    # -- models and health ---------------------------------------------------------------------------

    def cards(self) -> list[dict]:
        def card(name: str, parent: str | None = None) -> dict:
            return {"id": name, "object": "model", "created": self.created, "owned_by": "workbench",
                    **({"parent": parent} if parent else {})}

        return [card(self.base_name), *(card(n, self.base_name) for n in self.engine.adapter_names)]

    async def list_models(self):
        return {"object": "list", "data": self.cards()}

    async def get_model(self, model_id: str):
        for card in self.cards():
            if card["id"] == model_id or (model_id == "base" and card["id"] == self.base_name):
                return card
        raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")

    async def health(self, request: Request):
        # Liveness and batch counters for anyone; which model and adapters are served only with the key.
        names = {"model": self.base_name, "adapters": self.engine.adapter_names} if self.authorized(request) else {}
        return {"status": "ok", **names, **self.engine.stats()}

    # -- chat completions ----------------------------------------------------------------------------

    async def chat_completions(self, body: ChatBody):
        req = await asyncio.to_thread(ChatRequest, body, self.engine, base_names=self.base_names,
                                      default_max_tokens=self.default_max_tokens)
        # A forced call: its prefix follows the prompt, the constraint shapes the rest, stop strings do not apply.
        spec = RowSpec(req.prompt_ids + req.forced_ids, req.variant, req.gen_tokens,
                       () if req.forced_text else req.stop, label=req.model, tools=bool(req.tools),
                       constraint=req.constraint, ignore_eos=bool(body.ignore_eos))
        row = self.engine.submit(spec, req.gen)
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if req.stream:
            return StreamingResponse(self.stream(row, req, completion_id, now), media_type="text/event-stream",
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
        content, calls = answer(self.engine, row, req)
        self.answers.remember(completion_id, req, content, calls)
        message, finish = completion_message(row, req, content, calls)
        return {"id": completion_id, "object": "chat.completion", "created": now, "model": req.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": _usage(row, len(req.forced_ids)), "system_fingerprint": None}

    async def stream(self, row, req: ChatRequest, completion_id: str, now: int):
        """The answer as server-sent events: content deltas as they come (none for a forced call, and nothing
        from ``<tool_call>`` on), then the calls, the finish reason and, if asked, the usage."""

        def chunk(delta: dict, finish: str | None = None) -> str:
            return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": now, "model": req.model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                         "system_fingerprint": None, **({"usage": None} if req.include_usage else {})})

        text, sent = "", 0
        tools, forced = bool(req.tools), bool(req.forced_text)  # a forced call has no content to stream
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for kind, payload in _row_events(row):
                if kind == "error":
                    status = 400 if isinstance(payload, WorkbenchError) else 500
                    yield _sse(ApiError(status, f"generation failed: {payload}", type="invalid_request_error"
                                        if status == 400 else "server_error").body())
                    return
                text += payload
                visible = "" if forced else _visible(text, tools, final=False)
                if len(visible) > sent:
                    yield chunk({"content": visible[sent:]})
                    sent = len(visible)
            try:
                content, calls = answer(self.engine, row, req)
            except ApiError as exc:
                yield _sse(exc.body())
                return
            self.answers.remember(completion_id, req, content, calls)
            # Any text before a call was streamed already (visible stops at <tool_call>).
            message, finish = completion_message(row, req, content, calls)
            if "function_call" in message:
                yield chunk({"function_call": message["function_call"]})
            elif calls:
                yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(message["tool_calls"])]})
            else:
                visible = "" if forced else _visible(text, tools, final=True)
                if len(visible) > sent:
                    yield chunk({"content": visible[sent:]})
            yield chunk({}, finish)
            if req.include_usage:
                yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                            "model": req.model, "choices": [], "system_fingerprint": None,
                            "usage": _usage(row, len(req.forced_ids))})
            yield "data: [DONE]\n\n"
        finally:
            if not row.done:  # the client disconnected: stop generating its row
                row.cancel()

    # -- feedback ------------------------------------------------------------------------------------

    async def post_feedback(self, body: FeedbackBody):
        answers = self.answers.recall(body.ids, body.params)
        first = answers[0]
        for a, param in zip(answers[1:], body.params[1:]):
            if (a.prompt, a.system or "", a.tools) != (first.prompt, first.system or "", first.tools):
                raise ApiError(400, f"The answers '{first.id}' and '{a.id}' reply to different conversations "
                                    "(messages, system prompt or tools differ); compare answers to the same messages.",
                               param=param, code="conversation_mismatch")
        saved = await self.save_feedback(body, answers)
        out = {"object": "feedback", "dataset": self.feedback_name, "file": saved.path.name, "rows": saved.rows,
               "total": saved.total, "registered": saved.registered}
        if body.chosen_id:
            out.update(chosen=first.model, rejected=[a.model for a in answers[1:]])
        else:
            out.update(verdict="all bad", trainable=False)
        return out

    async def save_feedback(self, body: FeedbackBody, answers: list[preferences.Answer]) -> preferences.Saved:
        """Append the judgement to the preference dataset: pairs of the chosen answer with each other one, or
        one "all bad" row."""
        folder = self.dataset_dir or str(default_dataset_dir())
        try:
            if body.chosen_id:
                rows = preferences.pair_rows(answers[0], answers[1:], edited=body.edited, source="api",
                                             base_model=self.base_name)
                save = functools.partial(preferences.save_rows, folder, self.feedback_name, rows)
            else:
                row = preferences.both_bad_row(answers, source="api", base_model=self.base_name)
                save = functools.partial(preferences.save_both_bad, folder, self.feedback_name, row)
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None
        try:
            return await asyncio.to_thread(save)
        except WorkbenchError as exc:
            raise ApiError(409, str(exc), type="server_error", code="dataset_conflict") from None
        except OSError as exc:
            raise ApiError(500, f"could not write the feedback: {exc}", type="server_error") from None

    async def feedback_off(self):
        raise ApiError(404, "Feedback is off on this server (it was started with --no-feedback).", code="feedback_off")


async def _row_events(row):
    """A row's text deltas as ("delta", text), and ("error", exception) should generation fail; ends when the
    row is finished. Deltas that arrived together are one event, and the wait is a wake-up from the scheduler's
    thread (no worker-thread hop per token): under load a stream sends fewer, longer chunks instead of queueing."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    chained = row.listener

    def listener():
        if chained is not None:
            chained()
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the server's loop is closed: nobody is reading any more
            pass

    row.listener = listener
    while True:
        wake.clear()  # cleared before draining: an event put after the drain sets it again
        events = []
        while not row._events.empty():
            events.append(row._events.get_nowait())
        if not events:
            try:
                await asyncio.wait_for(wake.wait(), 1.0)
            except asyncio.TimeoutError:  # keep waiting: the request may be queued behind a batch
                pass
            continue
        text = "".join(payload for kind, payload in events if kind == "delta")
        if text:
            yield "delta", text
        for kind, payload in events:
            if kind == "error":
                yield kind, payload
                return
            if kind != "delta":
                return


def create_app(engine, *, api_key: str | None = None, max_batch: int = 8, default_max_tokens: int = 256,
               feedback: bool = True, dataset_dir: str | None = None, feedback_dataset: str | None = None,
               feedback_keep: int = FEEDBACK_KEEP):
    """``feedback``: keep finished answers for ``POST /v1/feedback``, which appends to the preference dataset
    ``feedback_dataset`` (default ``preferences``) in ``dataset_dir`` (default: data/ in the Workbench home)."""
    server = ApiServer(engine, api_key=api_key, max_batch=max_batch, default_max_tokens=default_max_tokens,
                       feedback=feedback, dataset_dir=dataset_dir, feedback_dataset=feedback_dataset,
                       feedback_keep=feedback_keep)
    app = FastAPI(title="Workbench API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=server.lifespan)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.middleware("http")(server.check_key)
    app.get("/v1/models")(server.list_models)
    app.get("/v1/models/{model_id:path}")(server.get_model)
    app.get("/health")(server.health)
    app.post("/v1/chat/completions")(server.chat_completions)
    app.post("/v1/feedback")(server.post_feedback if feedback else server.feedback_off)
    return app


# -- the command -------------------------------------------------------------------------------------

def configure_api(parser: argparse.ArgumentParser) -> None:
    from workbench.config.model import add_model_flags

    add_model_flags(parser, template=True,
                    adapter_help="serve an adapter under NAME (repeatable); requests pick it with model=NAME")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("WORKBENCH_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $WORKBENCH_API_KEY; none = open, "
                             "allowed on loopback only)")
    parser.add_argument(INSECURE_FLAG, dest="insecure_no_auth", action="store_true",
                        help="allow a --host beyond loopback without --api-key (your own proxy authenticates)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="most requests generated side by side (rows of the running batch; more wait in a queue)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="answer length when a request gives no max_tokens (cut to the context)")
    parser.add_argument("--dataset-dir", default=None,
                        help="where POST /v1/feedback keeps preference data (default: data/ in the Workbench home)")
    parser.add_argument("--feedback-dataset", default=None, metavar="NAME",
                        help="the preference dataset POST /v1/feedback appends to: NAME.jsonl, registered in "
                             "dataset_info.json on first use (default: preferences)")
    parser.add_argument("--no-feedback", dest="feedback", action="store_false",
                        help="keep no answers in memory and turn POST /v1/feedback off")
    add_arguments(parser, ModelArgs, skip=("model_name_or_path", "adapter_name_or_path"))


def run_api(args) -> int:
    from workbench.infer.engine import ChatEngine
    from workbench.config.model import parse_adapter_specs
    from workbench.infer.session import load_for_chat

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
