"""``python -m workbench score …`` (score existing predictions) and ``python -m workbench eval …``
(generate with models × tasks, then score)."""

from __future__ import annotations

import argparse
import json
import sys

from workbench.config.base import WorkbenchError


# ---- score ------------------------------------------------------------------------------------

def configure_score(parser: argparse.ArgumentParser) -> None:
    from workbench.evaluate.metrics import BLEU_TOKENIZERS, CJK_MODES, NO_ANSWER_PHRASE

    sub = parser.add_subparsers(dest="metric", metavar="METRIC", required=True)
    squad = sub.add_parser("squad_v2", help="SQuAD v2.0 exact match and F1, as the official script",
                           description="Prints the official script's keys: exact, f1, total, HasAns_*, NoAns_*.")
    squad.add_argument("--data", required=True, help="the official SQuAD v2.0 json (data → paragraphs → qas)")
    squad.add_argument("--predictions", required=True, help="a json object {question_id: answer text}")
    squad.add_argument("--no-answer-phrase", default=NO_ANSWER_PHRASE,
                       help=f"a prediction equal to this phrase counts as 'no answer' (default: {NO_ANSWER_PHRASE}; "
                            "empty to turn off)")
    bleu = sub.add_parser("bleu", help="sacreBLEU corpus BLEU of line-aligned files")
    bleu.add_argument("--hyp", required=True, help="predictions, one per line")
    bleu.add_argument("--ref", required=True, action="append",
                      help="references, one per line (repeat --ref for several references per line)")
    bleu.add_argument("--tokenize", choices=BLEU_TOKENIZERS, default=None,
                      help="sacreBLEU tokenizer (default: zh for Chinese references, else 13a)")
    bleu.add_argument("--target-lang", default=None, help="target language code (zh picks the zh tokenizer)")
    bleu.add_argument("--sentences", action="store_true", help="also print sentence BLEU per line")
    rouge = sub.add_parser("rouge", help="ROUGE-1/2/L mean F-measure of line-aligned files")
    rouge.add_argument("--hyp", required=True, help="predictions, one per line")
    rouge.add_argument("--ref", required=True, help="references, one per line")
    rouge.add_argument("--cjk", choices=CJK_MODES, default="char",
                       help="how text with CJK characters is tokenized: one token per character (default) or jieba words")
    rouge.add_argument("--stemmer", action="store_true", help="Porter-stem English words (rouge-score use_stemmer)")


def run_score(args: argparse.Namespace) -> int:
    from workbench.evaluate import metrics

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
