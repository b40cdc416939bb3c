"""``python -m workbench models``."""

from __future__ import annotations

import argparse
import json


def configure_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def local_status(info) -> str:
    from workbench.models import bundled

    if info.bundled:
        try:
            bundled.gguf_path()
        except Exception:
            return f"missing ({bundled.INSTALL_HINT})"
        return "converted" if bundled.is_converted() else "bundled (converted on first use)"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(info.hub_id, local_files_only=True)
        return "in HF cache"
    except Exception:
        return "download needed"


def run_models(args) -> int:
    from workbench.models.registry import MODELS

    rows = [
        {"alias": m.alias, "hub_id": m.hub_id, "params": m.params, "template": m.template,
         "lora_targets": ",".join(m.lora_targets), "local": local_status(m)}
        for m in MODELS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    for r in rows:
        print("  ".join(str(r[h]).ljust(widths[h]) for h in headers))
    print("\nAny local model directory or hub id works too: --model /path/to/model")
    return 0
