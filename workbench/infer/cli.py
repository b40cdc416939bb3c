"""``python -m workbench chat``: answer one --prompt, or chat interactively."""

from __future__ import annotations

import argparse
import sys

from workbench.config.base import add_arguments, from_mapping
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs


def configure_chat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model_name_or_path", default=argparse.SUPPRESS,
                        help="model alias, local directory or hub id (default: smollm2-135m-instruct)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="attach an adapter (repeatable)")
    parser.add_argument("--prompt", default=None, help="answer this prompt and exit")
    add_arguments(parser, ModelArgs, skip=("adapter_name_or_path",))
    add_arguments(parser, GenerationArgs)


def _split(args) -> tuple[ModelArgs, GenerationArgs]:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "adapter", "prompt")}
    model_keys = set(ModelArgs.__dataclass_fields__)
    model_args = from_mapping(ModelArgs, {k: v for k, v in values.items() if k in model_keys})
    gen_args = from_mapping(GenerationArgs, {k: v for k, v in values.items() if k not in model_keys})
    return model_args, gen_args


def run_chat(args) -> int:
    from workbench.models.adapters import parse_adapter_specs
    from workbench.models.loader import load_model

    model_args, gen_args = _split(args)
    loaded = load_model(model_args, adapters=parse_adapter_specs(args.adapter))
    tokenizer = loaded.tokenizer
    history: list[dict] = []
    if gen_args.system:
        history.append({"role": "system", "content": gen_args.system})

    def answer(prompt: str) -> str:
        import torch

        history.append({"role": "user", "content": prompt})
        inputs = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True).to(loaded.device)
        if gen_args.seed is not None:
            torch.manual_seed(gen_args.seed)
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, **gen_args.generate_kwargs())
        text = tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": text})
        return text

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    print(f"Chatting with {loaded.describe()}. Empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            prompt = input("> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        print(answer(prompt))
    return 0
