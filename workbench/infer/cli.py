"""``python -m workbench chat``: answer one --prompt, or chat interactively; --compare answers with the
base model and every adapter in one batch.

Interactive commands: ``/clear`` (new conversation), ``/use NAME`` (answer with base or an adapter),
``/tool RESULT`` (send a tool result as an observation turn and let the model continue), ``/exit``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.config.base import WorkbenchError, add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs, add_model_flags, parse_adapter_specs
from workbench.data.templates import resolve_template
from workbench.infer.engine import ChatEngine, parse_tools
from workbench.infer.session import load_for_chat

_OWN = ("command", "adapter", "prompt", "compare", "template", "tools", "use")


def configure_chat(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, template=True, adapter_help="attach an adapter under NAME, unmerged (repeatable; DIR "
                                                        "alone names it after the directory)")
    parser.add_argument("--prompt", default=None, help="answer this prompt, print the answer and exit")
    parser.add_argument("--compare", action="store_true",
                        help="answer with the base model and every adapter together (one batch), each under its name")
    parser.add_argument("--use", default=None, metavar="NAME",
                        help="who answers without --compare: base or an adapter name (default: the first adapter, else base)")
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
    if not value:
        return None
    path = Path(value).expanduser()
    if not value.lstrip().startswith(("[", "{")):
        if not path.is_file():
            raise WorkbenchError(f"--tools {value}: no such file (give a JSON file or JSON text)")
        return parse_tools(path.read_text(encoding="utf-8"), source=str(path))
    return parse_tools(value, source="--tools")


def format_calls(calls: list[dict]) -> str:
    return "\n".join(f"[tool call] {c['name']}({json.dumps(c.get('arguments', {}), ensure_ascii=False)})"
                     for c in calls)


def _answerer(args, adapters: dict[str, str]) -> str:
    """The one variant that answers without --compare: --use, else the first adapter, else the base."""
    use = args.use if args.use is not None else (next(iter(adapters), "base"))
    if args.compare and args.use is not None:
        raise WorkbenchError("--use picks one answerer; --compare answers with all of them (choose one)")
    if use != "base" and use not in adapters:
        raise WorkbenchError(f"--use {use}: no adapter of that name (given: {', '.join(adapters) or 'none'})")
    return use


def stream_answer(engine, name: str, history: list[dict], gen, tools) -> None:
    """One answerer: stream plain text as it comes; a tool call is printed structured at the end."""
    row = engine.stream(history, gen, variant=name, tools=tools)
    shown = ""
    try:
        for delta in row:
            shown += delta
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


def print_compare(engine, histories: dict[str, list[dict]], gen, tools) -> None:
    """Every answerer in one batch, printed one after another once all are done."""
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


class TerminalChat:
    """The conversation(s) of one ``chat`` session: one history per answerer (several with --compare)."""

    def __init__(self, engine, variants: list[str], gen, tools, compare: bool):
        self.engine, self.gen, self.tools, self.compare = engine, gen, tools, compare
        self.histories: dict[str, list[dict]] = {v: [] for v in variants}

    def answer(self, turn: dict) -> None:
        for history in self.histories.values():
            history.append(dict(turn))
        if len(self.histories) == 1:
            (name, history), = self.histories.items()
            stream_answer(self.engine, name, history, self.gen, self.tools)
        else:
            print_compare(self.engine, self.histories, self.gen, self.tools)

    def command(self, line: str) -> None:
        """One line typed at the prompt: a slash command or a user turn."""
        if line == "/clear":
            self.histories = {v: [] for v in self.histories}
            print("(new conversation)", file=sys.stderr)
        elif line.startswith("/use"):
            name = line[4:].strip()
            self.engine.check_variant(name)
            if self.compare:
                raise WorkbenchError("/use does not apply in --compare mode")
            self.histories = {name or "base": []}
            print(f"(new conversation with {name or 'base'})", file=sys.stderr)
        elif line.startswith("/tool"):
            if not any(h and h[-1].get("tool_calls") for h in self.histories.values()):
                raise WorkbenchError("/tool sends a tool result, but the last answer called no tool")
            self.answer({"role": "tool", "content": line[5:].strip()})
        else:
            self.answer({"role": "user", "content": line})

    def drop_unanswered(self) -> None:
        """A turn that failed is taken back, so the session goes on as if it had not been typed."""
        for history in self.histories.values():
            if history and history[-1]["role"] in ("user", "tool"):
                history.pop()

    def loop(self) -> None:
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line or line in ("/exit", "/quit"):
                break
            try:
                self.command(line)
            except WorkbenchError as exc:  # a bad turn keeps the session alive
                self.drop_unanswered()
                print(f"error: {exc}", file=sys.stderr)


def run_chat(args) -> int:
    model_args, gen = _split(args)
    adapters = parse_adapter_specs(args.adapter)
    tools = read_tools(args.tools)
    use = _answerer(args, adapters)
    template = resolve_template(args.template, model_args.model_name_or_path)  # a bad name fails before loading
    if tools and not template.supports_tools:
        raise WorkbenchError(f"template {template.name!r} has no tool-calling format, but --tools was given; "
                             "choose a tool-capable template (qwen, chatml, smollm2) or drop --tools")
    loaded = load_for_chat(model_args, adapters)
    engine = ChatEngine(loaded, args.template)
    for note in engine.notes(tools=bool(tools)):
        print(f"note: {note}", file=sys.stderr)
    variants = engine.variants if args.compare else [use]
    chat = TerminalChat(engine, variants, gen, tools, compare=args.compare)
    try:
        if args.prompt is not None:
            chat.answer({"role": "user", "content": args.prompt})
            return 0
        print(f"Chatting with {loaded.describe()} as {', '.join(variants)}. /clear, /use NAME, /tool RESULT, "
              "/exit; empty line or Ctrl-D quits.", file=sys.stderr)
        chat.loop()
        return 0
    finally:
        # The scheduler's thread ends before the interpreter does: left running into shutdown, it aborted the
        # process now and then ("terminate called without an active exception", exit 134) after the answer.
        engine.close("the chat ended")
