"""``python -m workbench COMMAND``: every action of the app on the command line.

Commands are registered by name → "module:stem"; the module defines ``configure_<stem>(parser)``
and ``run_<stem>(args) -> int``. Modules are imported only for the command that runs, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from workbench.config.base import WorkbenchError, allow_negative_numbers

COMMANDS: dict[str, tuple[str, str]] = {
    "webui": ("workbench.ui.app:webui", "start the web app (same as python webui.py)"),
    "models": ("workbench.models.cli:models", "list the model registry and what is available locally"),
    "train": ("workbench.train.cli:train", "fine-tune: stages pt/sft/rm/dpo with LoRA, QLoRA, freeze or full (YAML + --key value)"),
    "chat": ("workbench.infer.cli:chat", "chat with a model (and adapters) in the terminal, or answer one --prompt"),
    "api": ("workbench.infer.api:api", "serve the model and its adapters over an OpenAI-compatible HTTP API (/v1/chat/completions)"),
    "export": ("workbench.export.cli:export", "merge adapter(s) into the base model and save a standalone model (safetensors, or GGUF with --format gguf)"),
    "merge-adapters": ("workbench.export.cli:merge_adapters", "combine several LoRA adapters into one new adapter (linear, cat, svd, ties, dare)"),
    "data": ("workbench.data.cli:data", "check, preview and convert datasets (dataset_info.json, templates, seed tasks)"),
    "eval": ("workbench.evaluate.cli:eval", "evaluate the base model and adapters on tasks (BLEU, ROUGE-1, EM) in mixed batches; writes the matrix"),
    "jobs": ("workbench.jobs.cli:jobs", "list, follow, abort, delete and start jobs in the runs directory (training queues one at a time)"),
    "score": ("workbench.evaluate.cli:score", "score predictions: SQuAD v2.0 EM/F1, sacreBLEU, ROUGE (official definitions)"),
}


def _resolve(name: str):
    spec, _ = COMMANDS[name]
    module_name, stem = spec.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, f"configure_{stem}"), getattr(module, f"run_{stem}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="Workbench: fine-tune, chat with, evaluate and export language models.")
    # `--learning_rate -1e-4`: a negative number is a flag's value (then checked by the option), never a flag.
    allow_negative_numbers(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # allow_abbrev=False: a misspelt flag (--learning_rat) is an error, never taken for the option it prefixes.
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == command:
            configure, _ = _resolve(name)
            configure(sub_parser)
        _negative_numbers_everywhere(sub_parser)
    return parser


def _negative_numbers_everywhere(parser: argparse.ArgumentParser) -> None:
    """:func:`allow_negative_numbers` for a parser and the sub-commands a command added (``data preview``, ...)."""
    allow_negative_numbers(parser)
    for action in parser._actions:  # noqa: SLF001 - argparse lists sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                _negative_numbers_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, run = _resolve(args.command)
    try:
        return int(run(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """Keep library chatter (advisory warnings, telemetry) out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
