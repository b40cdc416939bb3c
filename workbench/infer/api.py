"""``python -m workbench api``: an OpenAI-compatible server for the base model and its adapters.

``GET /v1/models`` lists the base (under its model name; ``base`` works too) and every adapter by name.
``POST /v1/chat/completions`` answers with the one named in ``model``, streamed (SSE) or not, with
usage counts; bad requests get OpenAI-style error objects (``{"error": {message, type, param, code}}``)
with the matching HTTP status. Requests go through one :class:`BatchScheduler`: concurrent requests
with the same sampling settings are generated together in one batch, never interleaved.

Sampling follows the request: ``temperature`` omitted or 0 means greedy (deterministic); above 0 samples.
Extensions: ``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import secrets
import sys
import time
import uuid
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from workbench.config.base import OptionError, WorkbenchError, add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs

IGNORED_FIELDS = {"user", "metadata", "store", "parallel_tool_calls", "service_tier", "prediction"}
KNOWN_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
    "stop", "stream", "stream_options", "tools", "tool_choice", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "logprobs", "top_logprobs", "response_format", "logit_bias",
} | IGNORED_FIELDS
ROLES = ("system", "developer", "user", "assistant", "tool")


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
        turn: dict = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            turn["tool_calls"] = [_tool_call(c, i, j) for j, c in enumerate(m["tool_calls"])]
        elif role == "user" and m.get("content") is None:
            raise ApiError(400, f"messages[{i}].content is required for a user message.",
                           param=f"messages[{i}].content", code="missing_required_parameter")
        out.append(turn)
    if not out:
        raise ApiError(400, "'messages' has only system messages; add a user message.", param="messages",
                       code="invalid_value")
    return out, system


def _tool_call(call: Any, i: int, j: int) -> dict:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ApiError(400, f"{where} needs function.name.", param=where, code="invalid_value")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ApiError(400, f"{where}.function.arguments is not valid JSON.", param=where,
                           code="invalid_value") from None
    return {"name": fn["name"], "arguments": args}


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
        tool_choice = body.get("tool_choice", "auto")
        if tool_choice not in ("auto", "none", "required") and not isinstance(tool_choice, dict):
            raise ApiError(400, "'tool_choice' must be auto, none or required.", param="tool_choice",
                           code="invalid_value")
        if isinstance(tool_choice, dict) or tool_choice == "required":
            raise ApiError(400, "Only tool_choice auto or none is supported (the model decides whether to call).",
                           param="tool_choice", code="unsupported_parameter")
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ApiError(400, "'tools' must be a list of tool objects.", param="tools", code="invalid_type")
        try:
            self.tools = parse_tools(tools, source="tools") if tool_choice != "none" else None
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), param="tools", code="invalid_value") from None
        # Prompt: template, tools support and context length checked here, before the request queues.
        try:
            self.prompt_ids, self.max_new_tokens = engine.encode(
                self.messages, system=self.system, tools=self.tools, max_new_tokens=self.gen.max_new_tokens,
                strict_length=self.explicit_max,
            )
        except ContextLengthError as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except ToolsNotSupportedError as exc:
            raise ApiError(400, str(exc), param="tools", code="invalid_value") from None
        except WorkbenchError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_value") from None


# -- responses ---------------------------------------------------------------------------------------

def _tool_calls_json(calls: list[dict]) -> list[dict]:
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
            for c in calls]


def _usage(row) -> dict:
    return {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens}


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


def create_app(engine, *, api_key: str | None = None, max_batch: int = 8, default_max_tokens: int = 256):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from workbench.infer.engine import BatchScheduler, RowSpec

    scheduler = BatchScheduler(engine, max_batch=max_batch)
    base_name = engine.loaded.label
    base_names = {base_name, "base"}
    created = int(time.time())
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
        spec = RowSpec(req.prompt_ids, req.variant, req.max_new_tokens, req.stop, label=req.model,
                       tools=bool(req.tools))
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
        reply = engine.reply(row)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        finish = row.finish_reason if row.finish_reason in ("stop", "length") else "stop"
        if reply.tool_calls:
            message["content"] = reply.content or None
            message["tool_calls"] = _tool_calls_json(reply.tool_calls)
            finish = "tool_calls"
        return {"id": completion_id, "object": "chat.completion", "created": now, "model": req.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": _usage(row), "system_fingerprint": None}

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
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, payload = await asyncio.to_thread(events.get, True, 1.0)
                except Exception:  # queue.Empty: keep waiting (the request may be queued behind a batch)
                    continue
                if kind == "delta":
                    text += payload
                    visible = _visible(text, tools, final=False)
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
            reply = engine.reply(row)
            visible = _visible(text, tools, final=True)
            if reply.tool_calls:  # any text before the call was streamed already (visible stops at <tool_call>)
                calls = _tool_calls_json(reply.tool_calls)
                yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})
                finish = "tool_calls"
            else:
                if len(visible) > sent:
                    yield chunk({"content": visible[sent:]})
                finish = row.finish_reason if row.finish_reason in ("stop", "length") else "stop"
            yield chunk({}, finish)
            if req.include_usage:
                yield chunk({}, None, _usage(row), choices=False)
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
    from workbench.data.templates import resolve_template

    resolve_template(args.template, model_args.model_name_or_path)
    loaded = load_for_chat(model_args, adapters)
    engine = ChatEngine(loaded, args.template)
    app = create_app(engine, api_key=args.api_key, max_batch=args.max_batch, default_max_tokens=args.max_tokens)
    import uvicorn

    names = ", ".join(engine.variants[1:]) or "none"
    print(f"Workbench API on http://{args.host}:{args.port}/v1 — model {loaded.label}, adapters: {names}"
          f"{', API key required' if args.api_key else ''}", file=sys.stderr, flush=True)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
