"""Canonical records: every input format is converted once into one of these three shapes.

* :class:`Conversation` — role/content turns (user, assistant, tool) with an optional system prompt and
  tool definitions. Assistant turns may carry ``tool_calls`` (``[{"name", "arguments": dict}]``).
  Alpaca rows, sharegpt and OpenAI ``messages`` all become conversations; KTO rows carry ``kto_tag``.
* :class:`Preference` — a prompt (turns ending with a user or tool turn) and a chosen and a rejected
  assistant message, for reward modelling and DPO.
* :class:`Text` — plain text for pre-training.

Tool definitions are kept in the OpenAI shape ``{"type": "function", "function": {name, description,
parameters}}`` so every template renders them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

ROLES = ("user", "assistant", "tool")


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    kto_tag: bool | None = None
    kind: str = field(default="conversation", init=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "messages": self.messages}
        if self.system is not None:
            out["system"] = self.system
        if self.tools:
            out["tools"] = self.tools
        if self.kto_tag is not None:
            out["kto_tag"] = self.kto_tag
        return out


@dataclass
class Preference:
    prompt: list[dict[str, Any]]
    chosen: dict[str, Any]
    rejected: dict[str, Any]
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    kind: str = field(default="preference", init=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "prompt": self.prompt, "chosen": self.chosen,
                               "rejected": self.rejected}
        if self.system is not None:
            out["system"] = self.system
        if self.tools:
            out["tools"] = self.tools
        return out


@dataclass
class Text:
    text: str
    kind: str = field(default="text", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text}


Record = Union[Conversation, Preference, Text]


def from_dict(data: dict[str, Any]) -> Record:
    kind = data.get("kind")
    if kind == "conversation":
        return Conversation(data["messages"], data.get("system"), data.get("tools"), data.get("kto_tag"))
    if kind == "preference":
        return Preference(data["prompt"], data["chosen"], data["rejected"], data.get("system"), data.get("tools"))
    if kind == "text":
        return Text(data["text"])
    raise ValueError(f"unknown record kind {kind!r}")


def to_json(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)


def from_json(text: str) -> Record:
    return from_dict(json.loads(text))


def message(role: str, content: str, tool_calls: list[dict] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


def normalize_tool(tool: Any, index: int = 1) -> dict[str, Any]:
    """Tool definition ``index`` (counted from 1, for errors) in the OpenAI shape: ``{"type": "function",
    "function": {...}}`` (the type may be left out), or a bare ``{name, description, parameters}`` (wrapped)."""
    if not isinstance(tool, dict):
        raise ValueError(f"tool {index} must be a JSON object, got {type(tool).__name__}")
    fn = tool
    if "function" in tool:
        if tool.get("type", "function") != "function":
            raise ValueError(f"tool {index} has type {tool.get('type')!r}; only 'function' is supported")
        fn = tool["function"]
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ValueError(f"tool {index} needs a function name (\"name\": \"...\")")
    if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
        raise ValueError(f"tool {index} ({fn['name']}): parameters must be a JSON schema object")
    return {"type": "function", "function": fn}


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    """Tool definitions as data files, requests and the chat tab give them: a JSON string, a list, or a single
    definition; empty means none. Every reader of tool definitions comes through here."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list of tool definitions, got {type(value).__name__}")
    tools = [normalize_tool(t, i) for i, t in enumerate(value, 1)]
    return tools or None


def call_arguments(arguments: Any, *, strict: bool = False) -> Any:
    """A call's arguments: JSON text is decoded (blank: ``{}``); text that is not JSON is kept as written, or
    with ``strict`` refused (ValueError). Anything else is already decoded."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        if strict:
            raise ValueError("the arguments are not valid JSON") from None
        return arguments


def parse_tool_call_value(value: Any) -> list[dict[str, Any]]:
    """One or several calls as written in sharegpt ``function_call`` turns or OpenAI ``tool_calls``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"function call is not valid JSON ({exc.msg} at position {exc.pos})") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise ValueError(f"a function call must be an object, got {type(call).__name__}")
        if isinstance(call.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
            call = call["function"]
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a function call needs a non-empty 'name'")
        out.append({"name": name, "arguments": call_arguments(call.get("arguments", {}))})
    return out
