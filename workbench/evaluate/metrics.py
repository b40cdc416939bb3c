"""Metrics as pure functions over lists of strings, with the official definitions.

* **BLEU** — sacreBLEU corpus BLEU, 0–100, with its signature. The tokenizer follows the target
  language: ``zh`` for Chinese targets, ``13a`` otherwise (given, or detected from the references).
  Sentence BLEU (``effective_order``, sacreBLEU's sentence default) is only for browsing examples.
* **ROUGE** — rouge-score F-measure, the plain mean over examples (no bootstrap), 0–100. rouge-score's
  tokenizer keeps only ``[a-z0-9]`` and would turn Chinese into nothing, so text containing CJK
  characters is tokenized with :class:`CJKTokenizer`: one token per CJK character (``cjk="char"``,
  the default) or jieba words (``cjk="jieba"``); Latin runs in that text are tokenized as rouge-score
  does. Text without CJK characters goes through rouge-score's own tokenizer unchanged.
* **SQuAD v2.0 EM / F1** — as the official ``evaluate-v2.0.py``: answers are normalised (lower case,
  punctuation removed, articles removed, whitespace collapsed), the score is the maximum over the gold
  answers, and an unanswerable question's only gold is the empty answer. A prediction equal (after
  normalisation) to the no-answer phrase (default ``unanswerable``, what the converter trains) counts
  as the empty answer. Missing predictions are scored as wrong, never skipped.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from workbench.config.base import WorkbenchError

NO_ANSWER_PHRASE = "unanswerable"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
CJK_MODES = ("char", "jieba")
BLEU_TOKENIZERS = ("13a", "zh", "intl", "char", "none")

# Han (with extensions and compatibility), kana, hangul: scripts written without spaces between words.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\U00020000-\U0002ffff"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_OR_WORD_RE = re.compile(f"[{_CJK}]|[a-z0-9]+")


def has_cjk(text: str) -> bool:
    return _CJK_RE.search(text) is not None


def cjk_share(texts: Iterable[str]) -> float:
    """Share of CJK characters among the non-space characters of ``texts``."""
    cjk = total = 0
    for t in texts:
        cjk += len(_CJK_RE.findall(t))
        total += sum(1 for ch in t if not ch.isspace())
    return cjk / total if total else 0.0


def _references(references: Sequence[str] | Sequence[Sequence[str]], n: int, what: str) -> list[list[str]]:
    """One list of references per example (a single string is one reference)."""
    if len(references) != n:
        raise WorkbenchError(f"{what}: {n} predictions but {len(references)} references")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise WorkbenchError(f"{what}: example {i + 1} has no reference text")
        out.append(refs)
    return out


def _check_predictions(predictions: Sequence[str], what: str) -> None:
    if not predictions:
        raise WorkbenchError(f"{what}: there are no predictions to score")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise WorkbenchError(f"{what}: prediction {i + 1} is {type(p).__name__}, not text")


# ---- BLEU ---------------------------------------------------------------------------------------

def bleu_tokenizer_for(references: Iterable[str], target_lang: str | None = None) -> str:
    """``zh`` for Chinese targets, ``13a`` otherwise; the language is detected when not given."""
    if target_lang:
        return "zh" if target_lang.lower().split("-")[0] in ("zh", "cmn") else "13a"
    return "zh" if cjk_share(references) > 0.3 else "13a"


@dataclass
class BleuResult:
    score: float
    signature: str
    tokenize: str
    sentence: list[float]
    counts: list[int] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    bp: float = 0.0
    sys_len: int = 0
    ref_len: int = 0

    def to_dict(self, with_sentences: bool = False) -> dict:
        out = {"bleu": self.score, "signature": self.signature, "tokenize": self.tokenize, "counts": self.counts,
               "totals": self.totals, "bp": self.bp, "sys_len": self.sys_len, "ref_len": self.ref_len,
               "n": len(self.sentence)}
        if with_sentences:
            out["sentence_bleu"] = self.sentence
        return out


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
         tokenize: str | None = None, target_lang: str | None = None) -> BleuResult:
    """sacreBLEU corpus BLEU (0–100) plus sentence BLEU per example."""
    from sacrebleu.metrics import BLEU

    _check_predictions(predictions, "BLEU")
    refs = _references(references, len(predictions), "BLEU")
    if tokenize is None:
        tokenize = bleu_tokenizer_for((r for rs in refs for r in rs), target_lang)
    if tokenize not in BLEU_TOKENIZERS:
        raise WorkbenchError(f"BLEU tokenize {tokenize!r} is not one of: {', '.join(BLEU_TOKENIZERS)}")
    n_refs = max(len(r) for r in refs)
    # sacreBLEU takes reference *streams*; examples with fewer references are padded with None.
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_refs)]
    metric = BLEU(tokenize=tokenize)
    corpus = metric.corpus_score(list(predictions), streams)
    sent_metric = BLEU(tokenize=tokenize, effective_order=True)
    sentence = [sent_metric.sentence_score(p, r).score for p, r in zip(predictions, refs)]
    return BleuResult(score=corpus.score, signature=metric.get_signature().format(), tokenize=tokenize,
                      sentence=sentence, counts=list(corpus.counts), totals=list(corpus.totals), bp=corpus.bp,
                      sys_len=corpus.sys_len, ref_len=corpus.ref_len)


# ---- ROUGE --------------------------------------------------------------------------------------

class CJKTokenizer:
    """rouge-score's tokenizer for text without CJK; CJK characters (or jieba words) otherwise."""

    def __init__(self, cjk: str = "char", use_stemmer: bool = False):
        if cjk not in CJK_MODES:
            raise WorkbenchError(f"ROUGE cjk tokenization {cjk!r} is not one of: {', '.join(CJK_MODES)}")
        from nltk.stem import porter
        from rouge_score import tokenize as rouge_tokenize

        self.cjk = cjk
        self._default = rouge_tokenize.tokenize
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def _stem(self, token: str) -> str:
        if self._stemmer is not None and len(token) > 3 and not has_cjk(token):
            return self._stemmer.stem(token)
        return token

    def tokenize(self, text: str) -> list[str]:
        if not has_cjk(text):
            return self._default(text, self._stemmer)
        text = text.lower()
        if self.cjk == "char":
            return [self._stem(t) for t in _CJK_OR_WORD_RE.findall(text)]
        import jieba

        jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter goes to stderr otherwise
        tokens = []
        for piece in jieba.lcut(text):
            if has_cjk(piece):
                tokens.append(piece)  # a CJK word (punctuation never contains CJK characters)
            else:
                tokens += [self._stem(t) for t in re.findall(r"[a-z0-9]+", piece)]
        return tokens


@dataclass
class RougeResult:
    scores: dict[str, float]  # rouge type → mean F-measure, 0–100
    per_example: list[dict[str, float]]
    tokenizer: str

    def to_dict(self, with_examples: bool = False) -> dict:
        out = {**self.scores, "n": len(self.per_example), "tokenizer": self.tokenizer,
               "aggregation": "mean F-measure over examples"}
        if with_examples:
            out["per_example"] = self.per_example
        return out


def rouge_description(cjk: str = "char", use_stemmer: bool = False) -> str:
    latin = "rouge-score default (lowercase [a-z0-9] words" + (", Porter stemmer)" if use_stemmer else ")")
    cjk_text = "one token per CJK character" if cjk == "char" else "jieba words for CJK text"
    return f"{latin}; {cjk_text}"


def rouge(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
          rouge_types: Sequence[str] = ROUGE_TYPES, cjk: str = "char", use_stemmer: bool = False) -> RougeResult:
    """Mean rouge-score F-measure (0–100) per type; several references per example take the best."""
    from rouge_score import rouge_scorer

    _check_predictions(predictions, "ROUGE")
    refs = _references(references, len(predictions), "ROUGE")
    bad = [t for t in rouge_types if not re.fullmatch(r"rouge[1-9]|rougeL|rougeLsum", t)]
    if bad:
        raise WorkbenchError(f"unknown ROUGE type(s) {', '.join(bad)}; use rouge1..rouge9, rougeL or rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(rouge_types), tokenizer=CJKTokenizer(cjk, use_stemmer))
    per_example = []
    for pred, rs in zip(predictions, refs):
        result = scorer.score(rs[0], pred) if len(rs) == 1 else scorer.score_multi(rs, pred)
        per_example.append({t: result[t].fmeasure * 100 for t in rouge_types})
    n = len(per_example)
    scores = {t: sum(e[t] for e in per_example) / n for t in rouge_types}
    return RougeResult(scores, per_example, rouge_description(cjk, use_stemmer))


# ---- SQuAD v2.0 ---------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    gold_toks, pred_toks = answer_tokens(gold), answer_tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)  # a no-answer scores 1 only against a no-answer
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def as_no_answer(prediction: str, no_answer_phrase: str | None = NO_ANSWER_PHRASE) -> str:
    """The converter's no-answer phrase (``unanswerable``) means the empty answer."""
    if no_answer_phrase and normalize_answer(prediction) == normalize_answer(no_answer_phrase):
        return ""
    return prediction


def gold_answers(answers: Iterable[str]) -> list[str]:
    """Official rule: golds that normalise to nothing are dropped; none left = unanswerable = ``[""]``."""
    golds = [a for a in answers if normalize_answer(a)]
    return golds or [""]


def qa_scores(answers: Iterable[str], prediction: str, no_answer_phrase: str | None = NO_ANSWER_PHRASE
              ) -> tuple[int, float]:
    """(exact, f1) of one prediction: the maximum over the gold answers."""
    golds = gold_answers(as_no_answer(a, no_answer_phrase) for a in answers)
    pred = as_no_answer(prediction, no_answer_phrase)
    return max(exact_match(g, pred) for g in golds), max(token_f1(g, pred) for g in golds)


@dataclass
class SquadResult:
    scores: dict  # the official script's keys
    exact: dict[str, int]
    f1: dict[str, float]
    missing: list[str]
    unknown: list[str]


def squad_v2(golds: dict[str, list[str]], predictions: dict[str, str], *,
             no_answer_phrase: str | None = NO_ANSWER_PHRASE) -> SquadResult:
    """The official SQuAD v2.0 evaluation (no-answer threshold unused: every prediction is final).

    ``golds`` maps question id → gold answer texts (empty list: unanswerable). A question without a
    prediction is scored 0 and listed in ``missing``; predictions for unknown ids are listed in ``unknown``.
    """
    if not golds:
        raise WorkbenchError("SQuAD: the dataset has no questions")
    if not predictions:
        raise WorkbenchError("SQuAD: there are no predictions to score")
    exact: dict[str, int] = {}
    f1: dict[str, float] = {}
    missing = []
    for qid, answers in golds.items():
        if qid not in predictions:
            missing.append(qid)
            exact[qid], f1[qid] = 0, 0.0
            continue
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise WorkbenchError(f"SQuAD: the prediction for {qid} is {type(pred).__name__}, not text")
        exact[qid], f1[qid] = qa_scores(answers, pred, no_answer_phrase)
    unknown = [q for q in predictions if q not in golds]
    # Official split: a question has an answer when it lists one (here: one that is not the no-answer phrase).
    has_ans = [q for q, a in golds.items() if any(as_no_answer(x, no_answer_phrase) for x in a)]
    answerable = set(has_ans)
    no_ans = [q for q in golds if q not in answerable]

    def block(ids: list[str]) -> dict:
        n = len(ids)
        return {"exact": 100.0 * sum(exact[q] for q in ids) / n, "f1": 100.0 * sum(f1[q] for q in ids) / n,
                "total": n}

    scores = block(list(golds))
    for prefix, ids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if ids:  # the official script leaves out a block with no questions
            scores.update({f"{prefix}_{k}": v for k, v in block(ids).items()})
    return SquadResult(scores, exact, f1, missing, unknown)


def load_squad_golds(path: str | Path) -> dict[str, list[str]]:
    """Question id → gold answer texts from an official SQuAD json (``data`` → paragraphs → qas)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise WorkbenchError(f"{path}: not a SQuAD file (expected an object with a 'data' list of articles)")
    golds: dict[str, list[str]] = {}
    for a, article in enumerate(data["data"], 1):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else [], 1):
            for q, qa in enumerate(para.get("qas", []), 1):
                where = f"{path} article {a} paragraph {p} question {q}"
                if "id" not in qa:
                    raise WorkbenchError(f"{where}: the question has no 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise WorkbenchError(f"{where}: 'answers' is missing (a list; empty for unanswerable questions)")
                golds[str(qa["id"])] = [str(x.get("text", "")) for x in answers if isinstance(x, dict)]
    if not golds:
        raise WorkbenchError(f"{path}: holds no questions")
    return golds


def load_squad_predictions(path: str | Path) -> dict[str, str]:
    """The official predictions format: ``{question_id: answer_text}``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected an object {{question_id: answer}}, got {type(data).__name__}")
    if not data:
        raise WorkbenchError(f"{path}: holds no predictions")
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise WorkbenchError(f"{path}: the prediction for {bad[0]} is {type(data[bad[0]]).__name__}, not text"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return data


def _read_json(path: Path):
    if not path.is_file():
        raise WorkbenchError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_lines(path: str | Path) -> list[str]:
    """A line-aligned text file (one segment per line; a final newline does not add a line).

    Lines end at "\n" only (a "\r" before it is dropped): ``str.splitlines`` would also split at form feeds,
    U+0085, U+2028, U+2029 and other separators inside a segment and misalign hypotheses and references.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")  # bytes: no newline translation of a lone "\r" either
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline (or an empty file)
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_aligned(hyp_path: str | Path, ref_path: str | Path) -> tuple[list[str], list[str]]:
    hyps, refs = read_lines(hyp_path), read_lines(ref_path)
    if not hyps:
        raise WorkbenchError(f"{hyp_path}: holds no predictions (the file is empty)")
    if not refs:
        raise WorkbenchError(f"{ref_path}: holds no references (the file is empty)")
    if len(hyps) != len(refs):
        raise WorkbenchError(f"{hyp_path} has {len(hyps)} lines but {ref_path} has {len(refs)}; "
                             "predictions and references must be line-aligned")
    return hyps, refs
