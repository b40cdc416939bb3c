"""``python -m workbench score …`` (score existing predictions) and ``python -m workbench eval …``
(generate with models × tasks, then score)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from workbench.cli import quiet_libraries
from workbench.config.base import WorkbenchError, add_arguments, option_fields
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs, add_model_flags, parse_adapter_specs
from workbench.evaluate import metrics
from workbench.evaluate.metrics import BLEU_TOKENIZERS, CJK_MODES, NO_ANSWER_PHRASE
from workbench.evaluate.runner import evaluate


# ---- score ------------------------------------------------------------------------------------

def configure_score(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metric", metavar="METRIC", required=True)
    squad = sub.add_parser("squad_v2", help="SQuAD v2.0 exact match and F1, as the official script",
                           description="Prints the official script's keys: exact, f1, total, HasAns_*, NoAns_*.",
                           allow_abbrev=False)
    squad.add_argument("--data", required=True, help="the official SQuAD v2.0 json (data → paragraphs → qas)")
    squad.add_argument("--predictions", required=True, help="a json object {question_id: answer text}")
    squad.add_argument("--no-answer-phrase", default=NO_ANSWER_PHRASE,
                       help=f"a prediction equal to this phrase counts as 'no answer' (default: {NO_ANSWER_PHRASE}; "
                            "empty to turn off)")
    bleu = sub.add_parser("bleu", help="sacreBLEU corpus BLEU of line-aligned files", allow_abbrev=False)
    bleu.add_argument("--hyp", required=True, help="predictions, one per line")
    bleu.add_argument("--ref", required=True, action="append",
                      help="references, one per line (repeat --ref for several references per line)")
    bleu.add_argument("--tokenize", choices=BLEU_TOKENIZERS, default=None,
                      help="sacreBLEU tokenizer (default: zh for Chinese references, else 13a)")
    bleu.add_argument("--target-lang", default=None, help="target language code (zh picks the zh tokenizer)")
    bleu.add_argument("--sentences", action="store_true", help="also print sentence BLEU per line")
    rouge = sub.add_parser("rouge", help="ROUGE-1/2/L mean F-measure of line-aligned files", allow_abbrev=False)
    rouge.add_argument("--hyp", required=True, help="predictions, one per line")
    rouge.add_argument("--ref", required=True, help="references, one per line")
    rouge.add_argument("--cjk", choices=CJK_MODES, default="char",
                       help="how text with CJK characters is tokenized: one token per character (default) or jieba words")
    rouge.add_argument("--stemmer", action="store_true", help="Porter-stem English words (rouge-score use_stemmer)")


def run_score(args: argparse.Namespace) -> int:
    if args.metric == "squad_v2":
        golds = metrics.load_squad_golds(args.data)
        preds = metrics.load_squad_predictions(args.predictions)
        result = metrics.squad_v2(golds, preds, no_answer_phrase=args.no_answer_phrase or None)
        if result.missing:
            shown = ", ".join(result.missing[:10]) + (" …" if len(result.missing) > 10 else "")
            print(f"warning: {args.predictions} has no prediction for {len(result.missing)} of {len(golds)} "
                  f"questions, scored as wrong: {shown}", file=sys.stderr)
        if result.unknown:
            shown = ", ".join(result.unknown[:10]) + (" …" if len(result.unknown) > 10 else "")
            print(f"warning: {len(result.unknown)} predictions are for ids not in {args.data} (ignored): {shown}",
                  file=sys.stderr)
        out = result.scores
    elif args.metric == "bleu":
        hyps = metrics.read_lines(args.hyp)
        ref_streams = []
        for ref in args.ref:
            _, refs = metrics.read_aligned(args.hyp, ref)
            ref_streams.append(refs)
        if not hyps:
            raise WorkbenchError(f"{args.hyp}: holds no predictions (the file is empty)")
        per_line = [list(rs) for rs in zip(*ref_streams)]
        out = metrics.bleu(hyps, per_line, tokenize=args.tokenize, target_lang=args.target_lang).to_dict(
            with_sentences=args.sentences)
    elif args.metric == "rouge":
        hyps, refs = metrics.read_aligned(args.hyp, args.ref)
        out = metrics.rouge(hyps, refs, cjk=args.cjk, use_stemmer=args.stemmer).to_dict()
    else:  # argparse already restricts the choices
        raise WorkbenchError(f"unknown metric {args.metric!r}; choose from squad_v2, bleu, rouge")
    print(json.dumps(out, ensure_ascii=False))
    return 0


# ---- eval -------------------------------------------------------------------------------------

_EVAL_FLAGS = ("task", "metric", "max_samples", "batch_size", "max_new_tokens", "output_dir", "merged")


def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate answers with the base model and adapters (together, in mixed batches) for each "
                          "task, score them (BLEU / ROUGE-1 / EM), and write predictions, results.json and the matrix.")
    S = argparse.SUPPRESS
    add_model_flags(parser, underscore_names=True,
                    adapter_help="a LoRA adapter to evaluate next to the base (repeat; NAME= optional)")
    parser.add_argument("--merged", dest="merged", action="append", default=[], metavar="NAME=DIR",
                        help="a merged standalone model to evaluate too (repeat)")
    parser.add_argument("--task", dest="task", action="append", default=[], metavar="NAME[=DATASET]",
                        help="translation, summarization, qa (demo sets by default) or NAME=DATASET (repeat; "
                             "default: all three built-in tasks)")
    parser.add_argument("--metric", dest="metric", action="append", default=[], metavar="TASK=METRIC",
                        help="metric of a task: bleu, rouge1, rouge2, rougeL, em, f1 (repeat)")
    parser.add_argument("--max-samples", "--max_samples", dest="max_samples", default=S, metavar="N",
                        help="at most N examples per task")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", default=S, metavar="B",
                        help="rows per generate call (a row = one example under one model; default 8)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", default=S, metavar="T",
                        help="most tokens per answer (default: per task)")
    parser.add_argument("--output", "--output_dir", dest="output_dir", default=S, metavar="DIR",
                        help="output directory (default: a new eval-… run under the runs directory)")
    parser.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int, default=1,
                        metavar="N", help="shard the examples over N processes with accelerate launch (one per GPU)")
    add_arguments(parser, ModelArgs, skip=("model_name_or_path", "adapter_name_or_path"))
    add_arguments(parser, GenerationArgs, skip=("max_new_tokens",))
    add_arguments(parser, EvalArgs, skip=_EVAL_FLAGS)


def _eval_options(args: argparse.Namespace):
    values = {k: v for k, v in vars(args).items() if k not in ("command", "adapter", "num_processes")}
    values["task"] = ",".join(values.get("task") or []) or None
    values["metric"] = ",".join(values.get("metric") or []) or None
    values["merged"] = ",".join(values.get("merged") or []) or None
    picked = {}
    for cls in (ModelArgs, GenerationArgs, EvalArgs):
        names = option_fields(cls)
        picked[cls] = cls(**{k: v for k, v in values.items() if k in names and v is not None})
    adapters = parse_adapter_specs(args.adapter)
    return picked[ModelArgs], picked[GenerationArgs], picked[EvalArgs], adapters


def run_eval(args: argparse.Namespace) -> int:
    quiet_libraries()
    model_args, gen, eval_args, adapters = _eval_options(args)  # options are checked before any launch
    if args.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch(args.num_processes)
    evaluate(model_args, eval_args, gen, adapters=adapters)
    return 0


def _launch(num_processes: int) -> int:
    """Re-run this very command under ``accelerate launch`` with N processes (data-parallel generation)."""
    import torch

    argv = list(sys.argv[1:])
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--num-processes", "--num_processes"):
            skip = True
            continue
        if a.startswith(("--num-processes=", "--num_processes=")):
            continue
        cleaned.append(a)
    if torch.cuda.is_available() and torch.cuda.device_count() < num_processes:
        raise WorkbenchError(f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s) are visible")
    # --multi_gpu is accelerate's torchrun-style launcher; on a machine without GPUs its ranks talk over gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "workbench", *cleaned]
    print("Launching: " + shlex.join(launch), flush=True)
    try:
        return subprocess.call(launch)
    except KeyboardInterrupt:
        return 130
