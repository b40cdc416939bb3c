"""The models × tasks runner: generate answers in batches, score them, write the tables.

The base model is loaded once with every adapter attached unmerged; each batch holds rows of
(example, model) pairs, so one ``generate`` call answers the same prompts for the base and all
adapters (PEFT mixed adapter batches, see :mod:`workbench.infer.batch`). Merged (standalone) models
cannot share those weights and run after, one at a time. Examples are sorted by prompt length so a
batch pads little. Launched under ``accelerate launch`` with several processes, rows are sharded
over the processes (data-parallel generation) and gathered back in order on the main process.

Writes into the output directory:

* ``{model}/{task}/predictions.jsonl`` — id, prompt, prediction, reference(s), per-example scores;
* ``results.json`` — every metric of every model × task, the definitions and sacreBLEU signatures,
  timing, and the options used;
* ``matrix.csv`` / ``matrix.md`` — rows = one metric per task plus the mean, columns = models;
* ``progress.jsonl`` — one line per batch (step, total_steps, rows/s, elapsed, eta) for the jobs view; a row is
  one example answered by one model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.config.base import WorkbenchError
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.data.templates import get_template, resolve_template
from workbench.evaluate import metrics as M
from workbench.evaluate.tasks import Example, Task, build_tasks
from workbench.infer.batch import collect, submit_rows
from workbench.infer.scheduler import close_scheduler
from workbench.infer.session import load_for_vllm
from workbench.infer.session import check_adapters_base
from workbench.models import loader  # loader.load_model looked up at each call: tests replace it
from workbench.config.model import parse_adapter_specs
from workbench.models.registry import variant_template
from workbench.rundir import PROGRESS_FILE, append_progress, timestamped

BASE = "base"


@dataclass
class Variant:
    name: str
    kind: str  # base | adapter | merged
    path: str


@dataclass
class Row:
    task: int
    example: int
    variant: str
    prompt_ids: list[int] = field(default_factory=list)


# ---- progress -----------------------------------------------------------------------------------

def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Prints ``eval: 24/120 rows …`` lines and appends the same figures to ``progress.jsonl``."""

    def __init__(self, total: int, path: Path | None, printer: Callable[[str], None] = print, scale: int = 1):
        self.total, self.path, self.printer, self.scale = total, path, printer, scale
        self.done = 0
        self.new_tokens = 0
        self.busy = 0.0  # seconds spent generating: model loading does not count against the rate
        self.started = time.perf_counter()

    def update(self, rows: int, new_tokens: int, seconds: float, task: str, model_group: str) -> None:
        # Under data-parallel generation each process sees its share; ``scale`` turns it into the whole.
        self.done = min(self.total, self.done + rows * self.scale)
        self.new_tokens += new_tokens * self.scale
        self.busy += seconds
        elapsed = time.perf_counter() - self.started
        rate = self.done / self.busy if self.busy > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        record = {"step": self.done, "total_steps": self.total, "task": task, "models": model_group,
                  # rows (example × model) per second; "examples_per_second" is the old name, kept for readers
                  "rows_per_second": round(rate, 3), "examples_per_second": round(rate, 3),
                  "new_tokens_per_second": round(self.new_tokens / self.busy, 1) if self.busy > 0 else 0.0,
                  "elapsed": round(elapsed, 2), "eta": round(eta, 2) if eta is not None else None,
                  "time": time.time()}
        pct = 100 * self.done / self.total if self.total else 100.0
        self.printer(f"eval: {self.done}/{self.total} rows ({pct:.0f}%) | {task} | {model_group} | "
                     f"{rate:.2f} rows/s | elapsed {clock(elapsed)} | ETA {clock(eta or 0)}")
        if self.path is not None:
            append_progress(self.path, record)


# ---- distributed --------------------------------------------------------------------------------

def _world() -> tuple[int, int, Any]:
    """(rank, world size, accelerate state or None) when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # Without cpu=True accelerate sees no GPU backend and silently runs every rank alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes <= 1:
        raise WorkbenchError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but no process group could be set up")
    return state.process_index, state.num_processes, state


# ---- prompts ------------------------------------------------------------------------------------

def encode_examples(template, tokenizer, examples: list[Example], system: str | None,
                    max_prompt_len: int | None) -> tuple[list[list[int]], int]:
    """Prompt ids per example; returns (ids, number of prompts shortened to ``max_prompt_len``)."""
    out, cut = [], 0
    for ex in examples:
        ids = template.encode_prompt(tokenizer, ex.messages, system=ex.system or system)
        if max_prompt_len and len(ids) > max_prompt_len:
            ids = _shorten(template, tokenizer, ex, system, ids, max_prompt_len)
            cut += 1
        out.append(ids)
    return out, cut


def _shorten(template, tokenizer, ex: Example, system: str | None, ids: list[int], limit: int) -> list[int]:
    """Cut the end of the last message until the rendered prompt fits ``limit`` tokens."""
    content_ids = tokenizer(ex.messages[-1]["content"], add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(content_ids)
    if overhead >= limit:
        raise WorkbenchError(f"example {ex.id}: the prompt without its last message already has {overhead} tokens; "
                             f"raise max_prompt_len above {limit}")
    keep = limit - overhead
    for _ in range(4):  # re-tokenising the cut text can merge differently; shrink until it fits
        messages = [*ex.messages[:-1], {**ex.messages[-1], "content": tokenizer.decode(content_ids[:keep])}]
        ids = template.encode_prompt(tokenizer, messages, system=ex.system or system)
        if len(ids) <= limit:
            return ids
        keep -= len(ids) - limit
    return ids[-limit:]


# ---- scoring ------------------------------------------------------------------------------------

def score_task(task: Task, predictions: list[str], args: EvalArgs) -> tuple[dict, list[dict], str]:
    """(corpus scores, per-example scores, definition) of one model's answers to one task."""
    refs = [ex.references for ex in task.examples]
    if task.family == "bleu":
        tok = None if args.bleu_tokenize == "auto" else args.bleu_tokenize
        res = M.bleu(predictions, refs, tokenize=tok, target_lang=task.target_lang)
        scores = {"bleu": res.score, "signature": res.signature, "bp": res.bp, "sys_len": res.sys_len,
                  "ref_len": res.ref_len}
        per = [{"bleu": s} for s in res.sentence]
        definition = f"sacreBLEU corpus BLEU, 0–100 ({res.signature}); per example: sentence BLEU"
    elif task.family == "rouge":
        res = M.rouge(predictions, refs, cjk=args.rouge_cjk)
        scores, per = dict(res.scores), res.per_example
        definition = f"rouge-score F-measure, mean over examples, 0–100; tokens: {res.tokenizer}"
    else:
        if len(predictions) != len(task.examples):
            raise WorkbenchError(f"task {task.name}: {len(predictions)} predictions for {len(task.examples)} examples")
        # Keyed by the examples' own ids (the SQuAD question ids of official or converted data), as the official
        # script keys them; by position only when the ids are not unique.
        keys = [ex.id for ex in task.examples]
        if len(set(keys)) != len(keys):
            keys = [str(i) for i in range(len(task.examples))]
        golds = {k: ex.references for k, ex in zip(keys, task.examples)}
        preds = dict(zip(keys, predictions))
        res = M.squad_v2(golds, preds, no_answer_phrase=args.no_answer_phrase or None)
        scores = {"em": res.scores["exact"], "f1": res.scores["f1"], **res.scores}
        per = [{"em": 100.0 * res.exact[k], "f1": 100.0 * res.f1[k]} for k in keys]
        definition = ("SQuAD v2.0 exact match / F1 (official normalisation, max over gold answers, unanswerable = "
                      f"empty answer, {args.no_answer_phrase!r} counts as empty), 0–100")
    return scores, per, definition


# ---- tables -------------------------------------------------------------------------------------

def matrix_rows(results: dict) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the matrix: one row per task (its primary metric) plus the mean; columns = models."""
    models = [m["name"] for m in results["models"]]
    header = ["task", "metric", *models]
    rows: list[list[Any]] = []
    per_model: dict[str, list[float]] = {m: [] for m in models}
    for task in results["tasks"]:
        values = []
        for m in models:
            value = results["scores"][task["name"]][m][task["metric"]]
            per_model[m].append(value)
            values.append(round(value, 2))
        rows.append([task["name"], task["metric_label"], *values])
    rows.append(["mean", "", *[round(sum(v) / len(v), 2) if v else None for v in per_model.values()]])
    return header, rows


def matrix_csv(results: dict) -> str:
    header, rows = matrix_rows(results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def matrix_markdown(results: dict) -> str:
    """The study's table: the best value per row in bold."""
    header, rows = matrix_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        numbers = [v for v in row[2:] if isinstance(v, (int, float))]
        best = max(numbers) if numbers else None
        highlight = len(set(numbers)) > 1  # nothing stands out when every model scores the same
        cells = [f"**{v:.2f}**" if highlight and v == best else f"{v:.2f}" for v in row[2:]]
        lines.append("| " + " | ".join([str(row[0]), str(row[1]), *cells]) + " |")
    return "\n".join(lines) + "\n"


# ---- the run ------------------------------------------------------------------------------------

def default_output_dir() -> Path:
    from workbench.paths import run_path

    return run_path(timestamped("eval"))


def _variants(adapters: dict[str, str], merged: dict[str, str], include_base: bool, model: str) -> list[Variant]:
    out = [Variant(BASE, "base", model)] if include_base else []
    out += [Variant(n, "adapter", p) for n, p in adapters.items()]
    for name, path in merged.items():
        if name == BASE or name in adapters:
            raise WorkbenchError(f"merged model name {name!r} is already used by {'the base' if name == BASE else 'an adapter'}")
        out.append(Variant(name, "merged", path))
    if not out:
        raise WorkbenchError("nothing to evaluate: include_base is off and no adapters or merged models are given")
    return out


def evaluate(model_args: ModelArgs, eval_args: EvalArgs, gen: GenerationArgs, *,
             adapters: dict[str, str] | None = None, output_dir: str | Path | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Run every task for the base, the adapters and the merged models; write and return the results."""
    rank, world, state = _world()
    main = rank == 0
    say = (log or (lambda m: print(m, flush=True))) if main else (lambda m: None)
    adapters = dict(adapters if adapters is not None else model_args.adapter_map())
    merged = parse_adapter_specs(eval_args.merged)
    variants = _variants(adapters, merged, eval_args.include_base, model_args.model_name_or_path)
    out_dir = Path(output_dir or eval_args.output_dir or default_output_dir()).expanduser()
    if main and (out_dir / "results.json").exists():
        raise WorkbenchError(f"{out_dir} already holds evaluation results; choose another output directory")

    # Data and adapters first: a bad dataset or an adapter of another base fails before minutes of model
    # loading, and before the output directory exists (a refused evaluation leaves no empty run behind).
    tasks = build_tasks(eval_args.task, eval_args.metric, dataset_dir=eval_args.dataset_dir,
                        max_samples=eval_args.max_samples, max_new_tokens=eval_args.max_new_tokens)
    check_adapters_base(model_args.model_name_or_path, adapters)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        say(f"task {task.name}: {len(task.examples)} examples from {task.dataset}, metric {task.metric_label}, "
            f"max_new_tokens {task.max_new_tokens}")
        for w in task.warnings:
            say(f"warning: {w}")

    if state is not None and model_args.device == "auto":
        import torch

        if torch.cuda.is_available():
            model_args = dataclasses.replace(model_args, device=f"cuda:{state.local_process_index}")
    resolve_template(eval_args.template, model_args.model_name_or_path)  # an unknown name fails before loading
    total = sum(len(t.examples) for t in tasks) * len(variants)
    progress = Progress(total, out_dir / PROGRESS_FILE if main else None, say, scale=world)
    evaluation = _Evaluation(eval_args, gen, tasks, {v.name: v.kind for v in variants}, rank, world, state, say,
                             progress)
    for label, group_args, group_adapters, names in _model_groups(model_args, adapters, variants):
        evaluation.answer_group(label, group_args, group_adapters, names)
    if state is not None:
        evaluation.gather_counts()
    if not main:
        return {}
    results = _write_results(out_dir, tasks, variants, evaluation.predictions, eval_args, gen, model_args,
                             evaluation.timing(total))
    if any(evaluation.truncated.values()):
        say(f"note: prompts cut to max_prompt_len {eval_args.max_prompt_len}: {evaluation.truncated}")
    say(f"wrote {out_dir / 'results.json'}, {out_dir / 'matrix.csv'}, {out_dir / 'matrix.md'}")
    say(matrix_markdown(results).rstrip())
    return results


def _model_groups(model_args: ModelArgs, adapters: dict[str, str],
                  variants: list[Variant]) -> list[tuple[str, ModelArgs, dict[str, str], list[str]]]:
    """One model load each: (label, model options, adapters attached, variant names answering). The base carries
    every adapter unmerged, so they share its batches; a merged model is a model of its own."""
    groups: list[tuple[str, ModelArgs, dict[str, str], list[str]]] = []
    shared = [v.name for v in variants if v.kind in ("base", "adapter")]
    if shared:
        groups.append((model_args.model_name_or_path, model_args, adapters, shared))
    for v in variants:
        if v.kind == "merged":
            groups.append((v.name, dataclasses.replace(model_args, model_name_or_path=v.path,
                                                       adapter_name_or_path=None), {}, [v.name]))
    return groups


@dataclass
class _Evaluation:
    """One evaluation's generation: the answers of every variant to every task, and the time and tokens spent
    (this process's share until :meth:`gather_counts`)."""

    eval_args: EvalArgs
    gen: GenerationArgs
    tasks: list[Task]
    kinds: dict[str, str]  # variant name → base | adapter | merged
    rank: int
    world: int
    state: Any  # accelerate's PartialState under several processes, else None
    say: Callable[[str], None]
    progress: Progress
    predictions: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (task, variant) → answers
    truncated: dict[str, int] = field(default_factory=dict)  # task → prompts shortened to max_prompt_len
    gen_seconds: float = 0.0
    load_seconds: float = 0.0
    new_tokens: int = 0
    prompt_tokens: int = 0

    def answer_group(self, label: str, group_args: ModelArgs, group_adapters: dict[str, str],
                     names: list[str]) -> None:
        """Load one model (with its adapters) and answer every task with the variants ``names``."""
        # Each answers in the template it was trained with when the template is auto: an adapter from its run
        # record, a merged model from its export record, the base from the registry (or its tokenizer's own).
        templates = {}
        for name in names:
            chosen, note = variant_template(self.eval_args.template, group_args.model_name_or_path,
                                            group_adapters.get(name) if self.kinds[name] == "adapter" else None)
            if note:
                self.say(f"warning: {note}")
            templates[name] = get_template(chosen)
        self.say(f"loading {label}" + (f" with adapters {', '.join(group_adapters)}" if group_adapters else ""))
        if group_args.engine == "vllm":
            stops = list(dict.fromkeys(i for t in templates.values()
                                       for i in t.stop_token_ids(loader.load_tokenizer(
                                           loader.resolve_model_path(group_args.model_name_or_path)))))
            loaded = load_for_vllm(group_args, group_adapters, stop_token_ids=stops)
        else:
            loaded = loader.load_model(group_args, adapters=group_adapters, padding_side="left", generation=True)
        self.load_seconds += loaded.load_seconds
        used = ", ".join(f"{n}: {t.name}" for n, t in templates.items())
        self.say(f"loaded {loaded.describe()} in {loaded.load_seconds:.1f}s; templates {used}")
        try:
            for t_index, task in enumerate(self.tasks):
                self._answer_task(loaded, label, names, templates, t_index, task)
        finally:
            close_scheduler(loaded, f"evaluation of {label} ended")

    def _answer_task(self, loaded, label: str, names: list[str], templates: dict[str, Any], t_index: int,
                     task: Task) -> None:
        """Every variant's answers to ``task``, longest prompts first, sharded over the processes and gathered."""
        encoded = {}
        for t in {t.name: t for t in templates.values()}.values():
            encoded[t.name] = encode_examples(t, loaded.tokenizer, task.examples, self.gen.system,
                                              self.eval_args.max_prompt_len)
        self.truncated[task.name] = max(cut for _, cut in encoded.values())
        first = encoded[templates[names[0]].name][0]
        order = sorted(range(len(first)), key=lambda i: -len(first[i]))
        rows = [Row(t_index, i, name, encoded[templates[name].name][0][i]) for i in order for name in names]
        # Shard by example, not by row, so every process still batches the base with the adapters.
        mine = [(k, r) for k, r in enumerate(rows) if (k // len(names)) % self.world == self.rank]
        answers = self._generate(loaded, label, names, templates, task, mine)
        if self.state is not None:
            from accelerate.utils import gather_object

            answers = gather_object(answers)
        by_row = {k: text for k, text, _ in answers}
        if len(by_row) != len(rows):
            raise WorkbenchError(f"task {task.name}: {len(rows) - len(by_row)} answers went missing while gathering")
        for name in names:
            texts = [""] * len(task.examples)
            for k, r in enumerate(rows):
                if r.variant == name:
                    texts[r.example] = by_row[k]
            self.predictions[(task.name, name)] = texts

    def _generate(self, loaded, label: str, names: list[str], templates: dict[str, Any], task: Task,
                  mine: list[tuple[int, Row]]) -> list[tuple[int, str, int]]:
        """This process's rows answered in batches: (row number, answer, answer tokens)."""
        # One batch mixes variants: any of their end-of-turn tokens ends a row (all are special tokens).
        stops = list(dict.fromkeys(i for t in templates.values() for i in t.stop_token_ids(loaded.tokenizer)))
        peft_names = [n if self.kinds[n] == "adapter" else None for n in names]  # base and merged rows: no adapter
        task_gen = dataclasses.replace(self.gen, max_new_tokens=task.max_new_tokens)
        # Every row is queued at once; the scheduler keeps batch_size of them running and refills the batch as rows
        # finish (continuous batching). Progress is reported per batch_size finished rows.
        began = time.perf_counter()
        handles = submit_rows(loaded, [r.prompt_ids for _, r in mine], [peft_names[names.index(r.variant)]
                                                                         for _, r in mine],
                              task_gen, stops, max_rows=self.eval_args.batch_size)
        answers: list[tuple[int, str, int]] = []
        step = self.eval_args.batch_size
        for start in range(0, len(handles), step):
            chunk = handles[start:start + step]
            result = collect(chunk)
            spent = time.perf_counter() - began
            began = time.perf_counter()
            self.gen_seconds += spent
            self.new_tokens += result.new_tokens
            self.prompt_tokens += result.prompt_tokens
            answers += [(k, text, len(tok)) for (k, _), text, tok in zip(mine[start:start + step], result.texts,
                                                                        result.token_ids)]
            self.progress.update(len(chunk), result.new_tokens, spent, task.name, label)
        return answers

    def gather_counts(self) -> None:
        """Every process's time and tokens on every process: the slowest generation time, the summed tokens."""
        import torch
        from accelerate.utils import gather

        stats = torch.tensor([self.gen_seconds, self.new_tokens, self.prompt_tokens], dtype=torch.float64)
        stats = gather(stats.to(self.state.device)).view(self.world, 3).cpu()
        self.gen_seconds = float(stats[:, 0].max())
        self.new_tokens, self.prompt_tokens = int(stats[:, 1].sum()), int(stats[:, 2].sum())

    def timing(self, rows: int) -> dict[str, Any]:
        """results.json's ``timing``."""
        seconds = self.gen_seconds
        return {"generate_seconds": round(seconds, 3), "load_seconds": round(self.load_seconds, 3),
                "rows": rows, "rows_per_second": round(rows / seconds, 3) if seconds else None,
                # the old name of rows_per_second, kept for readers of older results
                "examples_per_second": round(rows / seconds, 3) if seconds else None,
                "new_tokens": self.new_tokens, "prompt_tokens": self.prompt_tokens,
                "new_tokens_per_second": round(self.new_tokens / seconds, 1) if seconds else None,
                "processes": self.world, "prompts_shortened": self.truncated}


def _write_results(out_dir: Path, tasks: list[Task], variants: list[Variant], predictions: dict,
                   eval_args: EvalArgs, gen: GenerationArgs, model_args: ModelArgs, timing: dict) -> dict:
    scores: dict[str, dict[str, dict]] = {}
    definitions: dict[str, str] = {}
    for task in tasks:
        scores[task.name] = {}
        for v in variants:
            preds = predictions[(task.name, v.name)]
            corpus, per, definition = score_task(task, preds, eval_args)
            scores[task.name][v.name] = corpus
            definitions[task.name] = definition
            pred_dir = out_dir / v.name / task.name
            pred_dir.mkdir(parents=True, exist_ok=True)
            with open(pred_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
                for ex, pred, s in zip(task.examples, preds, per):
                    f.write(json.dumps({"id": ex.id, "prompt": ex.prompt_text, "prediction": pred,
                                        "reference": ex.references[0] if ex.references else "",
                                        "references": ex.references, "score": s}, ensure_ascii=False) + "\n")
    results = {
        "model": model_args.model_name_or_path,
        "models": [dataclasses.asdict(v) for v in variants],
        "tasks": [{"name": t.name, "metric": t.metric, "metric_label": t.metric_label, "dataset": t.dataset,
                   "examples": len(t.examples), "max_new_tokens": t.max_new_tokens,
                   "definition": definitions[t.name]} for t in tasks],
        "scores": scores,
        "timing": timing,
        "options": {"eval": eval_args.to_dict(), "generation": gen.to_dict(), "model": model_args.to_dict()},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    header, rows = matrix_rows(results)
    results["matrix"] = {"header": header, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "matrix.csv").write_text(matrix_csv(results), encoding="utf-8")
    (out_dir / "matrix.md").write_text(matrix_markdown(results), encoding="utf-8")
    return results


def load_results(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise WorkbenchError(f"{path}: no evaluation results here (yet)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path}: not valid JSON ({exc.msg})") from None


def load_predictions(out_dir: str | Path, model: str, task: str) -> list[dict]:
    path = Path(out_dir) / model / task / "predictions.jsonl"
    if not path.is_file():
        raise WorkbenchError(f"{path}: no predictions for model {model!r} on task {task!r}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

