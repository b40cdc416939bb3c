"""Evaluation tasks: a dataset of prompts with reference answers, a metric, and generation defaults.

Three tasks are built in, with the data converters' prompts (``workbench.data.converters``):

* ``translation`` — zh→en, sacreBLEU (demo: ``demo_translation_zh_en_test``);
* ``summarization`` — CNN/DailyMail, ROUGE-1 (demo: ``demo_summarization_test``);
* ``qa`` — SQuAD v2.0, exact match (demo: ``demo_qa_test``).

``NAME=DATASET`` points a task at other data: a ``dataset_info.json`` name (any alpaca/sharegpt set,
hub ids included), a data file, the official SQuAD json (every gold answer and the unanswerable
questions are kept), CNN/DailyMail rows (``article``/``highlights``), WMT rows (``translation``) or
line-aligned ``SRC+TGT`` text files (a ``*.zh`` file alone finds its ``*.en`` neighbour). Converted
data gets exactly the prompts the converters write for training.

Rows of a dataset or data file (alpaca, sharegpt, …) that carry an ``id`` keep it as the example's id,
and an ``answers`` column (the gold answer texts, as ``data convert --task squad_v2`` writes: a list of
texts, ``[]`` for an unanswerable question; HF's ``{"text": [...]}`` is read too) replaces the single
reference from the answer turn, so a converted SQuAD set is scored against every gold answer and reported
under its question ids, as the official script does. Training ignores both columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError
from workbench.config.eval import BUILTIN_TASKS

# Primary metric name → (scorer family, label shown in tables).
METRICS: dict[str, tuple[str, str]] = {
    "bleu": ("bleu", "BLEU"),
    "rouge1": ("rouge", "ROUGE-1"),
    "rouge2": ("rouge", "ROUGE-2"),
    "rougeL": ("rouge", "ROUGE-L"),
    "em": ("squad", "EM"),
    "f1": ("squad", "F1"),
}


@dataclass(frozen=True)
class TaskDef:
    name: str
    metric: str
    default_dataset: str
    max_new_tokens: int
    description: str
    target_lang: str | None = None


BUILTIN: dict[str, TaskDef] = {
    "translation": TaskDef("translation", "bleu", "demo_translation_zh_en_test", 128,
                           "zh→en translation (WMT19), sacreBLEU corpus BLEU", target_lang="en"),
    "summarization": TaskDef("summarization", "rouge1", "demo_summarization_test", 128,
                             "news summarization (CNN/DailyMail), ROUGE-1 F-measure"),
    "qa": TaskDef("qa", "em", "demo_qa_test", 32, "extractive QA (SQuAD v2.0), exact match"),
}
assert tuple(BUILTIN) == BUILTIN_TASKS


@dataclass
class Example:
    id: str
    messages: list[dict[str, Any]]  # the prompt: turns ending with the user's question
    references: list[str]  # gold answers; empty for an unanswerable QA question
    system: str | None = None

    @property
    def prompt_text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Task:
    name: str
    metric: str
    dataset: str
    max_new_tokens: int
    examples: list[Example] = field(default_factory=list)
    target_lang: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def family(self) -> str:
        return METRICS[self.metric][0]

    @property
    def metric_label(self) -> str:
        return METRICS[self.metric][1]


# ---- task specs ---------------------------------------------------------------------------------

def parse_metric_overrides(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise WorkbenchError(f"metric {item!r}: write TASK=METRIC (metrics: {', '.join(METRICS)})")
        task, metric = (p.strip() for p in item.split("=", 1))
        if metric not in METRICS:
            raise WorkbenchError(f"unknown metric {metric!r} for task {task!r}; choose from: {', '.join(METRICS)}")
        out[task] = metric
    return out


def split_task_list(text: str | list[str] | None) -> list[str]:
    items = text if isinstance(text, list) else (text or "").split(",")
    return [i.strip() for spec in items for i in spec.split(",") if i.strip()]


def parse_task_specs(tasks: str | list[str], metrics: str | None = None) -> list[tuple[str, str, str | None]]:
    """``["qa", "translation=FILE", "mine=FILE"]`` → ``[(name, metric, dataset or None)]``."""
    overrides = parse_metric_overrides(metrics)
    specs, seen = [], set()
    for item in split_task_list(tasks):
        name, _, dataset = item.partition("=")
        name, dataset = name.strip(), dataset.strip() or None
        if not name:
            raise WorkbenchError(f"task {item!r}: the task needs a name (NAME or NAME=DATASET)")
        if name in seen:
            raise WorkbenchError(f"task {name!r} is given twice; give other datasets other task names")
        seen.add(name)
        if name in BUILTIN:
            metric = overrides.pop(name, BUILTIN[name].metric)
        elif name in overrides:
            metric = overrides.pop(name)
            if dataset is None:
                raise WorkbenchError(f"task {name!r} is not built in: give its data as {name}=DATASET")
        else:
            raise WorkbenchError(
                f"unknown task {name!r}: built in are {', '.join(BUILTIN)}; for a task of your own give "
                f"{name}=DATASET and its metric with --metric {name}=bleu|rouge1|em|…"
            )
        specs.append((name, metric, dataset))
    if overrides:
        raise WorkbenchError(f"--metric names task(s) that are not evaluated: {', '.join(overrides)}")
    if not specs:
        raise WorkbenchError("name at least one task (translation, summarization, qa or NAME=DATASET)")
    return specs


# ---- loading examples ---------------------------------------------------------------------------

ID_COLUMN, ANSWERS_COLUMN = "id", "answers"


def _row_id(row: dict) -> str | None:
    value = row.get(ID_COLUMN)
    return None if value is None or str(value) == "" else str(value)


def _row_answers(row: dict, where: str) -> list[str] | None:
    """The gold answer texts of a row's ``answers`` column; None when the row has none to give."""
    value = row.get(ANSWERS_COLUMN)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # HF SQuAD columns: {"text": [...], "answer_start": [...]}
        value = value.get("text")
        if value is None:
            return None
    if not isinstance(value, (list, tuple)):
        raise WorkbenchError(f"{where}: '{ANSWERS_COLUMN}' must be a list of gold answer texts, got "
                             f"{type(value).__name__}")
    texts = []
    for item in value:
        if isinstance(item, dict):  # official SQuAD: [{"text": ..., "answer_start": ...}]
            item = item.get("text", "")
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise WorkbenchError(f"{where}: '{ANSWERS_COLUMN}' must be a list of gold answer texts, found "
                                 f"{type(item).__name__}")
        texts.append(str(item))
    return texts


def _from_alpaca_rows(rows: list[dict], where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows, 1):
        prompt = "\n".join(p for p in (row.get("instruction", ""), row.get("input", "")) if p)
        golds = _row_answers(row, f"{where} row {i}")
        out.append(Example(_row_id(row) or str(i), [{"role": "user", "content": prompt}],
                           [row["output"]] if golds is None else golds))
    if not out:
        raise WorkbenchError(f"{where}: no usable rows")
    return out


def _squad_examples(path: Path, max_samples: int | None) -> list[Example]:
    """The official SQuAD json or rows with context/question/answers: every gold answer kept."""
    from workbench.data.converters import qa_prompt

    out: list[Example] = []

    def add(qid, title, context, question, answers) -> bool:
        out.append(Example(str(qid if qid is not None else len(out) + 1),
                           [{"role": "user", "content": qa_prompt(str(title or ""), str(context), str(question))}],
                           [str(a) for a in answers]))
        return bool(max_samples and len(out) >= max_samples)

    data = _json_object(path)
    if data is not None:
        for a, article in enumerate(data["data"], 1):
            for p, para in enumerate(article.get("paragraphs", []), 1):
                for q, qa in enumerate(para.get("qas", []), 1):
                    if "question" not in qa or "answers" not in qa:
                        raise WorkbenchError(f"{path} article {a} paragraph {p} question {q}: needs 'question' "
                                             "and 'answers' (an empty list for unanswerable questions)")
                    texts = [x.get("text", "") for x in qa["answers"] if isinstance(x, dict)]
                    if add(qa.get("id"), article.get("title", ""), para.get("context", ""), qa["question"], texts):
                        return out
        return out
    from workbench.data.loader import iter_file_rows

    for where, row in iter_file_rows(path):
        answers = row.get("answers")
        if isinstance(answers, dict):
            texts = list(answers.get("text") or [])
        elif isinstance(answers, list):
            texts = [x.get("text", "") if isinstance(x, dict) else str(x) for x in answers]
        else:
            raise WorkbenchError(f"{where}: 'answers' must be {{'text': [...]}} or a list; without reference "
                                 "answers a QA row cannot be scored")
        if add(row.get("id"), row.get("title", ""), row.get("context", ""), row.get("question", ""), texts):
            break
    return out


def _json_object(path: Path) -> dict | None:
    """The parsed file when it is one JSON object with a ``data`` list (official SQuAD), else None."""
    if path.suffix.lower() != ".json":
        return None
    with open(path, encoding="utf-8") as f:
        if not f.read(4096).lstrip().startswith("{"):
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # JSON lines in a .json file: read as rows
    return data if isinstance(data, dict) and isinstance(data.get("data"), list) else None


def _translation_pair(dataset: str) -> tuple[Path, Path] | None:
    if "+" in dataset:
        src, tgt = (Path(p.strip()).expanduser() for p in dataset.split("+", 1))
        for p in (src, tgt):
            if not p.is_file():
                raise WorkbenchError(f"{p}: file not found (SRC+TGT names two line-aligned text files)")
        return src, tgt
    path = Path(dataset).expanduser()
    if path.is_file() and path.suffix == ".zh" and path.with_suffix(".en").is_file():
        return path, path.with_suffix(".en")
    return None


def _records_examples(name: str, dataset_dir: str | None, max_samples: int | None) -> tuple[list[Example], list[str]]:
    """A registered dataset (or a data file in a chat format): prompt = all turns but the last answer."""
    from workbench.data import records as R
    from workbench.data.files import peek_rows
    from workbench.data.loader import load_spec
    from workbench.data.registry import get_spec
    from workbench.paths import default_dataset_dir

    spec = get_spec(name, Path(dataset_dir).expanduser() if dataset_dir else default_dataset_dir())
    if spec.load_from == "file" and spec.formatting == "alpaca" and spec.path.is_file():
        columns, _ = peek_rows(spec.path, 5)
        response = spec.columns.get("response", "output")
        if columns and response not in columns:
            raise WorkbenchError(f"dataset {name!r} ({spec.path}) has no reference answers: no {response!r} column "
                                 f"(columns: {', '.join(columns)})")
    loaded = load_spec(spec, max_samples)
    extras = _row_extras(spec, loaded.columns, loaded.records)
    examples = []
    for i, record in enumerate(loaded.records, 1):
        if not isinstance(record, R.Conversation):
            raise WorkbenchError(f"dataset {name!r} holds {record.kind} records; evaluation needs prompts with "
                                 "reference answers (alpaca or conversation rows)")
        last = record.messages[-1] if record.messages else {}
        if last.get("role") != "assistant" or not (last.get("content") or "").strip():
            raise WorkbenchError(f"dataset {name!r} row {i}: no reference answer (the last turn must be the "
                                 "assistant's answer)")
        rid, golds = extras[i - 1] if extras else (None, None)
        examples.append(Example(rid or str(i), [dict(m) for m in record.messages[:-1]],
                                [last["content"]] if golds is None else golds, record.system))
    warnings = [w.replace("skipped", "skipped (not evaluated)") for w in loaded.warnings()]
    return examples, warnings


def _row_extras(spec, columns: list[str], records: list) -> list[tuple[str | None, list[str] | None]] | None:
    """(id, gold answers) of the row behind each record, when the rows have ``id`` / ``answers`` columns.

    Training ignores those columns, so the loader's records do not carry them: the rows are read again
    and converted the same way, and each record is matched with the row that gave it: the records are the
    usable rows in order (or a ``num_samples`` choice of them), matched by content and, among rows with
    identical records, in order.
    """
    from workbench.data import records as R
    from workbench.data.formats import RowConverter, Skip
    from workbench.data.loader import spec_rows

    if not {ID_COLUMN, ANSWERS_COLUMN} & set(columns) or not records:
        return None
    converter = RowConverter(spec, columns)
    by_record: dict[str, list[tuple[str | None, list[str] | None]]] = {}
    usable = 0
    for where, row in spec_rows(spec):  # already read (and cached) by load_spec
        if not isinstance(row, dict):
            continue
        try:
            record = converter.convert(row, where)
        except Skip:
            continue
        by_record.setdefault(R.to_json(record), []).append((_row_id(row), _row_answers(row, where)))
        usable += 1
        if not spec.num_samples and usable >= len(records):
            break  # the records are the first usable rows
    taken: dict[str, int] = {}
    out = []
    for record in records:
        key = R.to_json(record)
        found = by_record.get(key)
        if not found:  # cannot happen unless the data changed between the reads: fall back to no extras
            return None
        out.append(found[taken.get(key, 0) % len(found)])  # num_samples may repeat rows
        taken[key] = taken.get(key, 0) + 1
    return out


def load_examples(name: str, dataset: str, *, dataset_dir: str | None = None, max_samples: int | None = None,
                  direction: str = "zh-en") -> tuple[list[Example], list[str]]:
    """Examples of one task's dataset (see the module docstring for what ``dataset`` may be)."""
    from workbench.data.converters import example_rows

    pair = _translation_pair(dataset)
    if pair is not None:
        rows = example_rows("wmt19", source=pair[0], target=pair[1], max_samples=max_samples, direction=direction)
        return _from_alpaca_rows(rows, f"{pair[0]}+{pair[1]}"), []
    path = Path(dataset).expanduser()
    if path.is_file():
        if _json_object(path) is not None:
            return _squad_examples(path, max_samples), []
        from workbench.data.files import peek_rows

        columns, _ = peek_rows(path, 5)
        cols = set(columns)
        if {"article", "highlights"} <= cols:
            return _from_alpaca_rows(example_rows("cnn_dailymail", input=path, max_samples=max_samples), str(path)), []
        if {"context", "question"} <= cols:
            return _squad_examples(path, max_samples), []
        if "translation" in cols:
            rows = example_rows("wmt19", input=path, max_samples=max_samples, direction=direction)
            return _from_alpaca_rows(rows, str(path)), []
    elif any(sep in dataset for sep in ("/", "\\")) and path.suffix and not path.exists():
        raise WorkbenchError(f"task {name}: {path}: file not found")
    return _records_examples(dataset, dataset_dir, max_samples)


def demo_folder(demo: str, dataset_dir: str | None) -> str | None:
    """Where a built-in task's demo set is read: the dataset folder when it registers it (the user's copy),
    else the project's ``data/`` (a folder of the user's own, or one whose demo entries were removed)."""
    from workbench.data.registry import dataset_names
    from workbench.paths import default_dataset_dir, project_data_dir

    folder = Path(dataset_dir).expanduser() if dataset_dir else default_dataset_dir()
    return str(folder) if demo in dataset_names(folder) else str(project_data_dir())


def build_tasks(tasks: str | list[str], metrics: str | None = None, *, dataset_dir: str | None = None,
                max_samples: int | None = None, max_new_tokens: int | None = None) -> list[Task]:
    out = []
    for name, metric, dataset in parse_task_specs(tasks, metrics):
        builtin = BUILTIN.get(name)
        folder = dataset_dir
        if not dataset:
            dataset = builtin.default_dataset  # type: ignore[union-attr]
            folder = demo_folder(dataset, dataset_dir)
        examples, warnings = load_examples(name, dataset, dataset_dir=folder, max_samples=max_samples)
        if not examples:
            raise WorkbenchError(f"task {name}: {dataset} holds no examples")
        if METRICS[metric][0] != "squad":
            empty = [e.id for e in examples if not any(r.strip() for r in e.references)]
            if empty:
                raise WorkbenchError(f"task {name}: {len(empty)} example(s) of {dataset} have no reference answer "
                                     f"(first: {empty[0]}); {METRICS[metric][1]} needs one for every example")
        out.append(Task(name, metric, dataset, max_new_tokens or (builtin.max_new_tokens if builtin else 128),
                        examples, builtin.target_lang if builtin else None, warnings))
    return out
