"""``python -m workbench export`` and ``merge-adapters``: flags, then the merge engine in :mod:`workbench.export.merge`."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from workbench.config.base import add_arguments, from_mapping
from workbench.config.export import ExportArgs, MergeAdaptersArgs
from workbench.config.model import ModelArgs, add_model_flags, parse_adapter_specs
from workbench.export.merge import Progress, combine_adapters, export_steps, merge_into_model


_MODEL_SKIP = ("adapter_name_or_path", "infer_dtype", "attn_implementation")


def _interrupt_on_sigterm() -> None:
    """Aborting a job sends SIGTERM: turn it into KeyboardInterrupt so the staging directory is removed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, model_help="base model: alias, local directory or hub id", adapter_metavar="[NAME=]DIR",
                    adapter_help="adapter directory (repeatable; export adds every one to the model)")
    parser.add_argument("--progress-file", dest="progress_file", default=None, metavar="FILE",
                        help="also append one JSON line per step to FILE (the Export tab's job reads it)")


def _split(args, cls):
    values = {k: v for k, v in vars(args).items() if k not in ("command", "adapter", "progress_file")}
    model_keys = set(ModelArgs.__dataclass_fields__)
    model_args = from_mapping(ModelArgs, {k: v for k, v in values.items() if k in model_keys})
    opts = from_mapping(cls, {k: v for k, v in values.items() if k not in model_keys})
    return model_args, parse_adapter_specs(args.adapter), opts


def configure_export(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    shard = ExportArgs.__dataclass_fields__["shard_size"]
    parser.add_argument("--shard-size", "--shard_size", dest="shard_size", default=argparse.SUPPRESS, metavar="SIZE",
                        help=f"{shard.metadata['help']} (default: {shard.default})")
    add_arguments(parser, ExportArgs)
    add_arguments(parser, ModelArgs, skip=_MODEL_SKIP)


def run_export(args) -> int:
    _interrupt_on_sigterm()
    model_args, adapters, opts = _split(args, ExportArgs)
    progress = Progress(export_steps(opts, len(adapters)), args.progress_file)
    record = merge_into_model(model_args, adapters, opts, progress=progress)
    for note in record["notes"]:
        print(f"note: {note}")
    print(done_message(record))
    return 0


def done_message(record: dict[str, Any]) -> str:
    """One line saying what was written and how to use it (the CLI prints it, the Export tab shows it)."""
    out, size = record["out"], record.get("bytes", 0) / 2**20
    if record["kind"] == "gguf_lora":
        return (f"GGUF LoRA adapter saved to {out} ({record['quant']}, {size:.1f} MiB). Use it with a GGUF of the base "
                f"model {record['base_model']} (export --format gguf without --adapter): "
                f"llama-cli -m BASE.gguf --lora {out}, or ADAPTER {out} in an Ollama Modelfile")
    if record["kind"] == "gguf_model":
        return (f"GGUF model saved to {out} ({record['quant']}, {size:.0f} MiB; peak memory "
                f"{record['peak_rss_mb']:.0f} MiB). Run it with llama.cpp: llama-cli -m {out}; Ollama: FROM {out} in a "
                "Modelfile; LM Studio: import the file")
    return (f"Merged model saved to {out} ({record['dtype']}, {len(record['shards'])} shard(s); "
            f"peak memory {record['peak_rss_mb']:.0f} MiB). Load it with --model {out}")


def configure_merge_adapters(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    add_arguments(parser, MergeAdaptersArgs)
    add_arguments(parser, ModelArgs, skip=_MODEL_SKIP + ("quantization_bit", "quantization_type",
                                                          "double_quantization"))


def run_merge_adapters(args) -> int:
    _interrupt_on_sigterm()
    model_args, adapters, opts = _split(args, MergeAdaptersArgs)
    record = combine_adapters(model_args, adapters, opts, progress=Progress(5, args.progress_file))
    print(f"Combined adapter (rank {record['r']}, {record['merge_method']}) saved to {record['out']}; "
          f"use it with --adapter {record['out']}")
    return 0
