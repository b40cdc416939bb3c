"""``python -m workbench data {check,preview,convert}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.cli import quiet_libraries
from workbench.config.base import WorkbenchError
from workbench.config.model import add_model_flags
from workbench.data.converters import ConvertOptions, convert, convert_and_register
from workbench.data.inspect import safe_file_name, template_notes, tokenizer_for
from workbench.data.loader import load_spec
from workbench.data.registry import get_spec, hub_cached, read_info
from workbench.data.stats import marked_pieces, marked_text, token_lengths
from workbench.data.templates import resolve_template
from workbench.paths import default_dataset_dir


def configure_data(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="load and validate datasets; print name, format, rows, columns, problems",
                           allow_abbrev=False)
    check.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: every entry)")
    check.add_argument("--dataset-dir", default=None,
                       help="folder with dataset_info.json (default: data/ in the Workbench home)")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")

    preview = sub.add_parser("preview", help="print rendered examples with the trained tokens marked, and token "
                                             "length statistics", allow_abbrev=False)
    preview.add_argument("name", metavar="NAME", help="a registered dataset, or a data file")
    add_model_flags(preview, template=True, model_dest="model", model_help="model whose tokenizer is used")
    preview.add_argument("-n", type=int, default=2, help="examples to print (default 2)")
    preview.add_argument("--dataset-dir", default=None)
    preview.add_argument("--cutoff-len", type=int, default=1024)
    preview.add_argument("--max-samples", type=int, default=None, help="rows read for the statistics (default: all)")
    preview.add_argument("--train-on-prompt", action="store_true")
    preview.add_argument("--mask-history", action="store_true")
    preview.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                         help="mark trained text with colour (auto: on a terminal) instead of ⟦ ⟧")

    conv = sub.add_parser("convert", help="convert cnn_dailymail / squad_v2 / wmt19 data to alpaca json with the "
                                          "reference instruction prompts", allow_abbrev=False)
    conv.add_argument("--task", required=True, choices=("cnn_dailymail", "squad_v2", "wmt19"))
    conv.add_argument("--input", type=Path, help="json / jsonl / parquet / csv input (SQuAD: the official json too)")
    conv.add_argument("--source", type=Path, help="wmt19: source-language text file, one sentence per line")
    conv.add_argument("--target", type=Path, help="wmt19: target-language text file, line-aligned with --source")
    conv.add_argument("--output", type=Path, default=None,
                      help="alpaca .json or .jsonl to write (with --register: default NAME.json in the dataset folder)")
    conv.add_argument("--register", metavar="NAME", default=None,
                      help="also register the output (and NAME_test for --test-output) in dataset_info.json")
    conv.add_argument("--dataset-dir", default=None,
                      help="with --register: the dataset folder (default: data/ in the Workbench home)")
    conv.add_argument("--direction", default="zh-en", choices=("zh-en", "en-zh"), help="wmt19 direction")
    conv.add_argument("--max-samples", type=int, default=None, help="a uniform random sample of this many rows")
    conv.add_argument("--seed", type=int, default=42)
    conv.add_argument("--drop-keywords", default="",
                      help="drop rows containing any (case-insensitive); separated by , ， or 、")
    conv.add_argument("--min-input-chars", type=int, default=None)
    conv.add_argument("--max-input-chars", type=int, default=None)
    conv.add_argument("--min-output-chars", type=int, default=None)
    conv.add_argument("--max-output-chars", type=int, default=None)
    conv.add_argument("--keep-unanswerable", action="store_true", help="squad_v2: keep unanswerable questions")
    conv.add_argument("--unanswerable-answer", default="unanswerable",
                      help="squad_v2: the answer written for unanswerable questions (default: unanswerable)")
    conv.add_argument("--test-output", type=Path, default=None, help="also write a disjoint held-out sample here")
    conv.add_argument("--test-size", type=int, default=0, help="rows in the held-out sample (default: a fifth)")
    conv.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run_data(args) -> int:
    return {"check": _check, "preview": _preview, "convert": _convert}[args.data_command](args)


def _dataset_dir(value: str | None) -> Path:
    return Path(value).expanduser() if value else default_dataset_dir()


def check_rows(dataset_dir: Path, names: list[str]) -> list[dict]:
    """One row per dataset: name, format, rows, columns used, problems, ok."""
    info = read_info(dataset_dir)
    if not names and not info:
        raise WorkbenchError(f"{dataset_dir / 'dataset_info.json'}: no datasets registered")
    rows = []
    for name in names or list(info):
        row = {"name": name, "format": "", "rows": "", "columns": "", "problems": "", "ok": False,
               "available": True}
        try:
            spec = get_spec(name, dataset_dir)
            row["format"] = spec.formatting + ("/ranking" if spec.ranking else "")
            if spec.load_from == "file" and not spec.path.exists():
                row["available"] = False
            elif spec.load_from != "file":
                row["available"] = hub_cached(spec)  # checking never downloads
            loaded = load_spec(spec, allow_download=False)
            row["format"] = f"{spec.formatting}/{loaded.kind}"
            row["rows"] = len(loaded.records)
            row["columns"] = ", ".join(f"{k}={v}" for k, v in loaded.used.items())
            row["problems"] = " ".join(loaded.warnings())
            row["ok"] = True
        except WorkbenchError as exc:
            row["problems"] = str(exc)
        rows.append(row)
    return rows


def _check(args) -> int:
    dataset_dir = _dataset_dir(args.dataset_dir)
    rows = check_rows(dataset_dir, args.names)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        headers = ["name", "format", "rows", "columns", "problems"]
        widths = {h: min(48, max(len(h), *(len(str(r[h])) for r in rows))) for h in headers[:-1]}
        print("  ".join(h.ljust(widths.get(h, 0)) for h in headers))
        for r in rows:
            print("  ".join(str(r[h]).ljust(widths[h]) for h in headers[:-1]) + "  " + (r["problems"] or "ok"))
        ok = sum(r["ok"] for r in rows)
        unavailable = sum(1 for r in rows if not r["ok"] and not r["available"])
        print(f"\n{ok} of {len(rows)} loaded; {unavailable} not available here (missing file or needs download); "
              f"{len(rows) - ok - unavailable} with errors", file=sys.stderr)
    if args.names:
        return 0 if all(r["ok"] for r in rows) else 1
    # Checking everything: a missing file or a hub download is reported, a broken local dataset fails.
    return 0 if all(r["ok"] or not r["available"] for r in rows) else 1


def _preview(args) -> int:
    quiet_libraries()
    if args.n < 0:
        raise WorkbenchError("-n must be 0 or more")
    dataset_dir = _dataset_dir(args.dataset_dir)
    spec = get_spec(args.name, dataset_dir)
    loaded = load_spec(spec, args.max_samples)
    tokenizer = tokenizer_for(args.model)
    template = resolve_template(args.template, args.model)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(f"dataset {spec.name}: {spec.formatting}/{loaded.kind}, {len(loaded.records)} examples; template "
          f"{template.name}; tokenizer of {args.model}")
    for w in loaded.warnings():
        print(f"warning: {w}")
    for note in template_notes(template, tokenizer, loaded.records):
        print(f"warning: template {template.name}: {note}")
    legend = "trained text in green" if color else "trained text between ⟦ and ⟧"
    for i, record in enumerate(loaded.records[: args.n], 1):
        pieces = marked_pieces(record, template, tokenizer, cutoff_len=args.cutoff_len,
                               train_on_prompt=args.train_on_prompt, mask_history=args.mask_history)
        print(f"\n──── example {i} ({legend}) ────")
        print(marked_text(pieces, color=color))
    stats = token_lengths(loaded.records, template, tokenizer, cutoff_len=args.cutoff_len,
                          train_on_prompt=args.train_on_prompt, mask_history=args.mask_history)
    print("\n" + stats.text())
    return 0


def _convert(args) -> int:
    if args.output is None and not args.register:
        raise WorkbenchError("data convert: give --output FILE, or --register NAME to write into the dataset folder")
    if args.dataset_dir and not args.register:
        raise WorkbenchError("--dataset-dir is for --register NAME (the folder whose dataset_info.json lists it)")
    opts = ConvertOptions(
        task=args.task, output=args.output, input=args.input, source=args.source, target=args.target,
        max_samples=args.max_samples, seed=args.seed,
        drop_keywords=[args.drop_keywords],
        min_input_chars=args.min_input_chars, max_input_chars=args.max_input_chars,
        min_output_chars=args.min_output_chars, max_output_chars=args.max_output_chars,
        direction=args.direction, keep_unanswerable=args.keep_unanswerable,
        unanswerable_answer=args.unanswerable_answer, test_output=args.test_output, test_size=args.test_size,
        overwrite=args.overwrite,
    )
    if args.register:
        dataset_dir = _dataset_dir(args.dataset_dir)
        if opts.output is None:
            opts.output = dataset_dir / f"{safe_file_name(args.register)}.json"
        report = convert_and_register(opts, dataset_dir, args.register, keep_output=True)
    else:
        report = convert(opts)
    for line in report.lines():
        print(line)
    return 0
