"""Convert the seed tasks' public data into alpaca rows with the reference study's instruction prompts.

* ``cnn_dailymail`` — rows with ``article`` / ``highlights`` (the CNN/DM jsonl, or the HF dataset's files);
* ``squad_v2`` — the official SQuAD json (data → paragraphs → qas) or rows with ``context`` / ``question``
  / ``answers`` (HF columns); unanswerable questions are dropped unless ``keep_unanswerable``;
* ``wmt19`` — line-aligned ``--source``/``--target`` text files, or rows with a ``translation`` object
  ({"zh": ..., "en": ...}) or ``zh``/``en`` columns; ``direction`` zh-en (default) or en-zh.

Rows are filtered (keywords, lengths), then sampled with a seeded reservoir in one pass (so a file of
millions of lines is never held in memory), and written as alpaca json/jsonl with the prompt in
``instruction`` and an ``id`` where the source has one.

SQuAD rows also carry ``answers``: every gold answer text of the question, in the source's order (an empty
list for an unanswerable one). Training reads only ``instruction``/``input``/``output`` (the first gold
answer) and ignores the extra columns; evaluation (:mod:`workbench.evaluate.tasks`) scores against all of
``answers`` and reports the original ``id``, so EM/F1 on a converted set equal the official script's.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from workbench.config.base import WorkbenchError
from workbench.data.files import iter_file_rows
from workbench.data.inspect import safe_file_name
from workbench.data.registry import atomic_write_text, read_info, save_entry

TASKS = ("cnn_dailymail", "squad_v2", "wmt19")
SUMMARY_PROMPT = "Please generate an concise summarization for the following article：\n:"
QA_PROMPT = ("Please answer the question in the context above, you only need to output the text of the answer, "
             "no explanation：\ntitle:{title}\ncontext:{context}\nquestion:{question}")
ZH_EN_PROMPT = "请把下面的句子翻译为英文：\n"
EN_ZH_PROMPT = "请把下面的句子翻译为中文：\n"


def summarization_prompt(article: str) -> str:
    return SUMMARY_PROMPT + article


def qa_prompt(title: str, context: str, question: str) -> str:
    # str.replace: contexts may contain braces.
    return QA_PROMPT.replace("{title}", title).replace("{context}", context).replace("{question}", question)


def translation_prompt(text: str, direction: str = "zh-en") -> str:
    return (ZH_EN_PROMPT if direction == "zh-en" else EN_ZH_PROMPT) + text


@dataclass
class ConvertOptions:
    task: str
    output: Path
    input: Path | None = None
    source: Path | None = None
    target: Path | None = None
    max_samples: int | None = None
    seed: int = 42
    drop_keywords: list[str] = field(default_factory=list)
    min_input_chars: int | None = None
    max_input_chars: int | None = None
    min_output_chars: int | None = None
    max_output_chars: int | None = None
    direction: str = "zh-en"
    keep_unanswerable: bool = False
    unanswerable_answer: str = "unanswerable"
    test_output: Path | None = None
    test_size: int = 0
    overwrite: bool = False


@dataclass
class ConvertReport:
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    keyword_drops: Counter = field(default_factory=Counter)
    kept_after_filters: int = 0
    written: int = 0
    test_written: int = 0
    outputs: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"drop keywords ({len(self.keywords)}): {', '.join(self.keywords)}"] if self.keywords else []
        out.append(f"read {self.read} rows")
        for reason, n in self.dropped.most_common():
            out.append(f"dropped {n}: {reason}")
        for kw, n in self.keyword_drops.most_common():
            out.append(f"dropped {n}: keyword {kw!r}")
        out.append(f"{self.kept_after_filters} rows passed the filters")
        out += self.outputs
        return out


# Keyword lists are pasted as people write them: "a,b", "甲，乙、丙", one per line.
_KEYWORD_SEPARATORS = re.compile(r"[,，、\n]")


def parse_keywords(values: str | Iterable[str]) -> list[str]:
    """Keywords from text or a list of texts, split on ASCII and full-width commas, the ideographic comma
    and newlines; lower-cased (matching ignores case), without blanks and repeats, in their order."""
    items = [values] if isinstance(values, str) else list(values)
    found = (k.strip().lower() for item in items for k in _KEYWORD_SEPARATORS.split(item or ""))
    return list(dict.fromkeys(k for k in found if k))


# ---- readers -------------------------------------------------------------------------------------

def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    for where, row in iter_file_rows(path):
        if not isinstance(row, dict):
            raise WorkbenchError(f"{where}: expected an object, got {type(row).__name__}")
        yield where, row


def _need(row: dict, where: str, *columns: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise WorkbenchError(f"{where}: missing column(s) {', '.join(missing)}; the row has: "
                             f"{', '.join(map(str, row)) or '(nothing)'}")


def _cnn_examples(opts: ConvertOptions, report: ConvertReport) -> Iterator[dict]:
    for where, row in _rows(_input(opts)):
        _need(row, where, "article", "highlights")
        ex = {"instruction": summarization_prompt(str(row["article"])), "input": "", "output": str(row["highlights"]),
              "_source": str(row["article"])}
        if row.get("id") is not None:
            ex["id"] = str(row["id"])
        yield ex


def _squad_examples(opts: ConvertOptions, report: ConvertReport) -> Iterator[dict]:
    path = _input(opts)
    official = None
    if path.suffix.lower() == ".json":
        with open(path, encoding="utf-8") as f:
            head = f.read(2048).lstrip()
        if head.startswith("{"):
            try:
                official = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise WorkbenchError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None
            if not (isinstance(official, dict) and isinstance(official.get("data"), list)):
                official = None  # a JSON-lines file after all: read as rows
    if official is not None:
        for a, article in enumerate(official["data"], 1):
            title = article.get("title", "")
            for p, para in enumerate(article.get("paragraphs", []), 1):
                for q, qa in enumerate(para.get("qas", []), 1):
                    where = f"{path.name} article {a} paragraph {p} question {q}"
                    _need(qa, where, "question")
                    answers = [x.get("text", "") for x in qa.get("answers", [])]
                    impossible = qa.get("is_impossible", False) or not answers
                    yield _qa_example(title, para.get("context", ""), qa["question"], answers, impossible,
                                      qa.get("id"), opts, report)
        return
    for where, row in _rows(path):
        _need(row, where, "context", "question", "answers")
        answers = row["answers"]
        if isinstance(answers, dict):
            texts = list(answers.get("text") or [])
        elif isinstance(answers, list):
            texts = [a.get("text", "") if isinstance(a, dict) else str(a) for a in answers]
        else:
            raise WorkbenchError(f"{where}: answers must be {{'text': [...]}} or a list, got {type(answers).__name__}")
        yield _qa_example(row.get("title", ""), row["context"], row["question"], texts, not texts, row.get("id"),
                          opts, report)


def _qa_example(title, context, question, answers, impossible, qid, opts, report) -> dict | None:
    if impossible:
        if not opts.keep_unanswerable:
            return None
        answer = opts.unanswerable_answer
    else:
        answer = answers[0]
    ex = {"instruction": qa_prompt(str(title), str(context), str(question)), "input": "", "output": answer,
          "_source": str(context)}
    if qid is not None:
        ex["id"] = str(qid)
    # Every gold answer (the official score is the maximum over them); none for an unanswerable question.
    ex["answers"] = [] if impossible else [str(a) for a in answers]
    return ex


def _wmt_examples(opts: ConvertOptions, report: ConvertReport) -> Iterator[dict]:
    src_lang, tgt_lang = opts.direction.split("-")
    if opts.source or opts.target:
        if not (opts.source and opts.target):
            raise WorkbenchError("wmt19: give both --source and --target (line-aligned files), or --input")
        for p in (opts.source, opts.target):
            if not Path(p).is_file():
                raise WorkbenchError(f"{p}: file not found")
        with open(opts.source, encoding="utf-8") as fs, open(opts.target, encoding="utf-8") as ft:
            number = 0
            while True:
                s, t = fs.readline(), ft.readline()
                if not s and not t:
                    break
                number += 1
                if not s or not t:
                    shorter = opts.source if not s else opts.target
                    raise WorkbenchError(f"{opts.source} and {opts.target} are not line-aligned: {shorter} ends at "
                                         f"line {number - 1}, the other file goes on")
                src, tgt = s.rstrip("\r\n"), t.rstrip("\r\n")
                yield _translation(src, tgt, opts, f"{Path(opts.source).stem}:{number}")
        return
    for where, row in _rows(_input(opts)):
        pair = row.get("translation") if isinstance(row.get("translation"), dict) else row
        _need(pair, where, src_lang, tgt_lang)
        yield _translation(str(pair[src_lang]), str(pair[tgt_lang]), opts, row.get("id"))


def _translation(src: str, tgt: str, opts: ConvertOptions, rid) -> dict | None:
    if not src.strip() or not tgt.strip():
        return {"_empty": True}
    ex = {"instruction": translation_prompt(src, opts.direction), "input": "", "output": tgt, "_source": src}
    if rid is not None:
        ex["id"] = str(rid)
    return ex


def _input(opts: ConvertOptions) -> Path:
    if not opts.input:
        raise WorkbenchError(f"{opts.task}: --input FILE is required")
    path = Path(opts.input)
    if not path.exists():
        raise WorkbenchError(f"{path}: file not found")
    return path


_READERS = {"cnn_dailymail": _cnn_examples, "squad_v2": _squad_examples, "wmt19": _wmt_examples}


# ---- filtering, sampling, writing -------------------------------------------------------------------

def _filter(ex: dict | None, opts: ConvertOptions, report: ConvertReport, keywords: list[str]) -> bool:
    if ex is None:
        report.dropped["unanswerable"] += 1
        return False
    if ex.get("_empty"):
        report.dropped["empty source or target"] += 1
        return False
    source, output = ex["_source"], ex["output"]
    if not output.strip():
        report.dropped["empty answer"] += 1
        return False
    checks = (
        (opts.min_input_chars, lambda n: len(source) < n, "input shorter than --min-input-chars"),
        (opts.max_input_chars, lambda n: len(source) > n, "input longer than --max-input-chars"),
        (opts.min_output_chars, lambda n: len(output) < n, "output shorter than --min-output-chars"),
        (opts.max_output_chars, lambda n: len(output) > n, "output longer than --max-output-chars"),
    )
    for limit, fails, reason in checks:
        if limit is not None and fails(limit):
            report.dropped[reason] += 1
            return False
    if keywords:
        haystack = (source + "\n" + output).lower()
        for kw in keywords:
            if kw in haystack:
                report.keyword_drops[kw] += 1
                return False
    return True


def _reservoir(items: Iterator[dict], k: int | None, seed: int) -> list[dict]:
    """A uniform sample of ``k`` items in one pass (all when k is None), in their original order."""
    if k is None:
        return list(items)
    rng = random.Random(seed)
    sample: list[tuple[int, dict]] = []
    for i, item in enumerate(items):
        if i < k:
            sample.append((i, item))
        else:
            j = rng.randint(0, i)
            if j < k:
                sample[j] = (i, item)
    return [item for _, item in sorted(sample, key=lambda p: p[0])]


def write_alpaca(path: Path, rows: list[dict], overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise WorkbenchError(f"{path} already exists; choose another --output or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in clean)
    elif path.suffix.lower() == ".json":
        text = json.dumps(clean, ensure_ascii=False, indent=2) + "\n"
    else:
        raise WorkbenchError(f"{path}: write .json or .jsonl")
    atomic_write_text(path, text)


def convert(opts: ConvertOptions) -> ConvertReport:
    if opts.task not in TASKS:
        raise WorkbenchError(f"unknown task {opts.task!r}; choose from {', '.join(TASKS)}")
    if opts.direction not in ("zh-en", "en-zh"):
        raise WorkbenchError(f"--direction {opts.direction!r}: use zh-en or en-zh")
    if opts.max_samples is not None and opts.max_samples < 1:
        raise WorkbenchError("--max-samples must be at least 1")
    if opts.test_size and not opts.test_output:
        raise WorkbenchError("--test-size needs --test-output FILE")
    for p in (opts.output, opts.test_output):
        if p is not None and Path(p).exists() and not opts.overwrite:
            raise WorkbenchError(f"{p} already exists; choose another file or pass --overwrite")
    keywords = parse_keywords(opts.drop_keywords)
    report = ConvertReport(keywords=keywords)

    def passing() -> Iterator[dict]:
        for ex in _READERS[opts.task](opts, report):
            report.read += 1
            if _filter(ex, opts, report, keywords):
                report.kept_after_filters += 1
                yield ex

    want = None if opts.max_samples is None else opts.max_samples + (opts.test_size or 0)
    rows = _reservoir(passing(), want, opts.seed)
    test_rows: list[dict] = []
    if opts.test_output:
        n_test = opts.test_size or max(1, len(rows) // 5)
        if n_test >= len(rows):
            raise WorkbenchError(f"--test-size {n_test} leaves no training rows out of {len(rows)}")
        chosen = set(random.Random(opts.seed + 1).sample(range(len(rows)), n_test))
        test_rows = [r for i, r in enumerate(rows) if i in chosen]
        rows = [r for i, r in enumerate(rows) if i not in chosen]
    if not rows:
        raise WorkbenchError(f"{opts.task}: no rows left to write ({'; '.join(report.lines())})")
    write_alpaca(opts.output, rows, opts.overwrite)
    report.written = len(rows)
    report.outputs.append(f"wrote {len(rows)} rows to {opts.output}")
    if opts.test_output:
        write_alpaca(opts.test_output, test_rows, opts.overwrite)
        report.test_written = len(test_rows)
        report.outputs.append(f"wrote {len(test_rows)} held-out rows to {opts.test_output}")
    return report


def example_rows(task: str, **kwargs: Any) -> list[dict]:
    """Convert without writing (for previews): the first rows that pass the filters."""
    opts = ConvertOptions(task=task, output=Path("unused.json"), **kwargs)
    report = ConvertReport()
    keywords = parse_keywords(opts.drop_keywords)
    out = []
    for ex in _READERS[task](opts, report):
        if _filter(ex, opts, report, keywords):
            out.append({k: v for k, v in ex.items() if not k.startswith("_")})
            if opts.max_samples and len(out) >= opts.max_samples:
                break
    return out


def convert_and_register(opts: ConvertOptions, dataset_dir: str | Path, name: str, *,
                         keep_output: bool = False) -> ConvertReport:
    """Convert into ``dataset_dir/<name>.json`` and register it under ``name`` (the UI's Convert button,
    ``data convert --register``). With ``keep_output`` the files named in ``opts`` are used; they must be
    inside ``dataset_dir``, as every registered file is.

    The name is checked first and the output removed again if the registry cannot be written, so a
    failure leaves nothing behind.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    name = (name or "").strip()
    if not name:
        raise WorkbenchError("give the converted dataset a name")
    existing = read_info(dataset_dir)
    for taken in (name, f"{name}_test") if opts.test_output is not None else (name,):
        if taken in existing:
            raise WorkbenchError(f"{dataset_dir / 'dataset_info.json'}: a dataset named {taken!r} already exists; "
                                 "choose another name")
    if keep_output:
        for flag, path in (("--output", opts.output), ("--test-output", opts.test_output)):
            if path is not None and Path(path).expanduser().resolve().parent != dataset_dir.resolve():
                raise WorkbenchError(f"{flag} {path}: a registered file must be in the dataset folder {dataset_dir}; "
                                     f"give a path there, or leave {flag} out to write {safe_file_name(name)}"
                                     f"{'_test' if flag == '--test-output' else ''}.json there")
    else:
        opts.output = dataset_dir / f"{safe_file_name(name)}.json"
        if opts.test_output is not None:
            opts.test_output = dataset_dir / f"{safe_file_name(name)}_test.json"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    report = convert(opts)
    written = [p for p in (opts.output, opts.test_output) if p is not None]
    try:
        save_entry(dataset_dir, name, {"file_name": opts.output.name})
        if opts.test_output is not None:
            save_entry(dataset_dir, f"{name}_test", {"file_name": opts.test_output.name})
    except BaseException:
        for p in written:
            Path(p).unlink(missing_ok=True)
        raise
    report.outputs.append(f"registered {name!r}" + (f" and {name + '_test'!r}" if opts.test_output else "")
                          + f" in {dataset_dir / 'dataset_info.json'}")
    return report
