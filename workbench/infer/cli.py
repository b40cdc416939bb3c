"""``python -m workbench chat``: answer one --prompt, or chat interactively; --compare answers with the
base model and every adapter in one batch.

Interactive commands: ``/clear`` (new conversation), ``/use NAME`` (answer with base or an adapter),
``/tool RESULT`` (send a tool result as an observation turn and let the model continue), ``/exit``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.config.base import WorkbenchError, add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs

_OWN = ("command", "adapter", "prompt", "compare", "template", "tools", "use")


def configure_chat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model_name_or_path", default=argparse.SUPPRESS,
                        help="model alias, local directory or hub id (default: smollm2-135m-instruct)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="attach an adapter under NAME, unmerged (repeatable; DIR alone names it after the directory)")
    parser.add_argument("--prompt", default=None, help="answer this prompt, print the answer and exit")
    parser.add_argument("--compare", action="store_true",
                        help="answer with the base model and every adapter together (one batch), each under its name")
    parser.add_argument("--use", default=None, metavar="NAME",
                        help="who answers without --compare: base or an adapter name (default: the first adapter, else base)")
    parser.add_argument("--template", default="auto",
                        help="chat template (default auto: the model's registry default, else the tokenizer's own)")
    parser.add_argument("--tools", default=None, metavar="FILE_OR_JSON",
                        help="tool definitions (a JSON file or JSON text) for tool-capable templates")
    add_arguments(parser, ModelArgs, skip=("adapter_name_or_path",))
    add_arguments(parser, GenerationArgs)


def _split(args) -> tuple[ModelArgs, GenerationArgs]:
    values = {k: v for k, v in vars(args).items() if k not in _OWN}
    model_keys = set(ModelArgs.__dataclass_fields__)
    model_args = from_mapping(ModelArgs, {k: v for k, v in values.items() if k in model_keys})
    gen_args = from_mapping(GenerationArgs, {k: v for k, v in values.items() if k not in model_keys})
    return model_args, gen_args


def read_tools(value: str | None):
    """--tools: a path to a JSON file, or JSON text."""
    from workbench.infer.engine import parse_tools

    if not value:
        return None
    path = Path(value).expanduser()
    if not value.lstrip().startswith(("[", "{")):
        if not path.is_file():
            raise WorkbenchError(f"--tools {value}: no such file (give a JSON file or JSON text)")
        return parse_tools(path.read_text(encoding="utf-8"), source=str(path))
    return parse_tools(value, source="--tools")


def format_calls(calls: list[dict]) -> str:
    import json

    return "\n".join(f"[tool call] {c['name']}({json.dumps(c.get('arguments', {}), ensure_ascii=False)})"
                     for c in calls)


def run_chat(args) -> int:
    from workbench.models.adapters import parse_adapter_specs

    model_args, gen = _split(args)
    adapters = parse_adapter_specs(args.adapter)
    tools = read_tools(args.tools)
    use = args.use if args.use is not None else (next(iter(adapters), "base"))
    if args.compare and args.use is not None:
        raise WorkbenchError("--use picks one answerer; --compare answers with all of them (choose one)")
    if use != "base" and use not in adapters:
        raise WorkbenchError(f"--use {use}: no adapter of that name (given: {', '.join(adapters) or 'none'})")

    from workbench.data.templates import resolve_template
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import load_for_chat

    template = resolve_template(args.template, model_args.model_name_or_path)  # a bad name fails before loading
    if tools and not template.supports_tools:
        raise WorkbenchError(f"template {template.name!r} has no tool-calling format, but --tools was given; "
                             "choose a tool-capable template (qwen, chatml, smollm2) or drop --tools")
    loaded = load_for_chat(model_args, adapters)
    engine = ChatEngine(loaded, args.template)
    for note in engine.notes(tools=bool(tools)):
        print(f"note: {note}", file=sys.stderr)
    variants = engine.variants if args.compare else [use]
    histories: dict[str, list[dict]] = {v: [] for v in variants}
    interactive = args.prompt is None
    multi = len(variants) > 1

    def answer(turn: dict) -> None:
        for history in histories.values():
            history.append(dict(turn))
        if not multi:
            (name, history), = histories.items()
            row = engine.stream(history, gen, variant=name, tools=tools)
            shown = ""
            try:
                for delta in row:
                    shown += delta
                    # Stream plain text; a tool call is printed structured at the end.
                    if "<tool_call>" not in shown:
                        sys.stdout.write(delta)
                        sys.stdout.flush()
            except KeyboardInterrupt:
                row.cancel()  # stop generating, and let the generate thread finish before exiting
                row.wait()
                raise
            reply = engine.reply(row)
            if reply.tool_calls:
                sys.stdout.write(("\n" if reply.content else "") + format_calls(reply.tool_calls))
            sys.stdout.write("\n")
            sys.stdout.flush()
            history.append(reply.message())
            return
        batch = engine.compare(histories, gen, tools=tools)
        try:
            batch.wait()
        except KeyboardInterrupt:
            batch.cancel()
            batch.wait()
            raise
        for name, row in zip(histories, batch.rows):
            reply = engine.reply(row)
            print(f"=== {name} ===")
            print(reply.content if reply.tool_calls else reply.text)
            if reply.tool_calls:
                print(format_calls(reply.tool_calls))
            histories[name].append(reply.message())
        sys.stdout.flush()

    if not interactive:
        answer({"role": "user", "content": args.prompt})
        return 0
    who = ", ".join(variants)
    print(f"Chatting with {loaded.describe()} as {who}. /clear, /use NAME, /tool RESULT, /exit; "
          "empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line or line in ("/exit", "/quit"):
            break
        try:
            if line == "/clear":
                histories = {v: [] for v in histories}
                print("(new conversation)", file=sys.stderr)
            elif line.startswith("/use"):
                name = line[4:].strip()
                engine.check_variant(name)
                if args.compare:
                    raise WorkbenchError("/use does not apply in --compare mode")
                histories = {name or "base": []}
                print(f"(new conversation with {name or 'base'})", file=sys.stderr)
            elif line.startswith("/tool"):
                result = line[5:].strip()
                if not any(h and h[-1].get("tool_calls") for h in histories.values()):
                    raise WorkbenchError("/tool sends a tool result, but the last answer called no tool")
                answer({"role": "tool", "content": result})
            else:
                answer({"role": "user", "content": line})
        except WorkbenchError as exc:  # a bad turn keeps the session alive
            for history in histories.values():
                if history and history[-1]["role"] in ("user", "tool"):
                    history.pop()
            print(f"error: {exc}", file=sys.stderr)
    return 0
