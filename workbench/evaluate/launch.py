"""Evaluation as a job, and reading finished evaluations back: what the Evaluate tab calls (no UI here).

:func:`plan_eval` turns the chosen models, tasks and options into the exact ``python -m workbench eval``
argv; :func:`start_eval` runs it as a Job whose run directory is also the evaluation's output directory,
so ``progress.jsonl``, the predictions, ``results.json`` and ``matrix.csv`` sit next to the job's
``log.txt`` and ``status.json``. :func:`list_evaluations` and :func:`example_rows` read them back.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError, option_flags
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.evaluate.runner import clock, load_predictions, load_results
from workbench.evaluate.tasks import parse_task_specs
from workbench.infer.session import check_adapters_base
from workbench.jobs import store as jobs
from workbench.models.adapters import read_adapter_config
from workbench.paths import PROJECT_ROOT, run_path, runs_dir
from workbench.rundir import timestamped

KIND = "eval"


@dataclass
class EvalPlan:
    name: str
    argv: list[str]
    config: dict[str, Any]
    output_dir: Path

    def command(self) -> str:
        """The command as a person would type it (``python -m workbench eval …``)."""
        return shlex.join(["python", *self.argv[1:]])


def eval_argv(model_args: ModelArgs, adapters: dict[str, str], eval_args: EvalArgs, gen: GenerationArgs,
              output_dir: str | Path) -> list[str]:
    """``python -m workbench eval`` with only what differs from the defaults, plus the output directory."""
    argv = [sys.executable, "-m", "workbench", "eval", "--model", model_args.model_name_or_path]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    for item in _split(eval_args.task):
        argv += ["--task", item]
    for item in _split(eval_args.metric):
        argv += ["--metric", item]
    for item in _split(eval_args.merged):
        argv += ["--merged", item]
    argv += option_flags(_without(eval_args.to_dict(non_default_only=True), "task", "metric", "merged", "output_dir"),
                         {"max_samples": "--max-samples", "batch_size": "--batch-size",
                          "max_new_tokens": "--max-new-tokens"})
    argv += option_flags(_without(model_args.to_dict(non_default_only=True), "model_name_or_path",
                                  "adapter_name_or_path"))
    argv += option_flags(_without(gen.to_dict(non_default_only=True), "max_new_tokens"))
    return argv + ["--output", str(output_dir)]


def _without(values: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in keys}


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def plan_eval(model_args: ModelArgs, adapters: dict[str, str], eval_args: EvalArgs, gen: GenerationArgs,
              name: str | None = None, root: Path | str | None = None) -> EvalPlan:
    """Check the request (tasks and metrics, adapter directories) and build the job's command."""
    parse_task_specs(eval_args.task, eval_args.metric)  # unknown task or metric: say so before starting
    for adapter_name, path in adapters.items():
        if adapter_name == "base":
            raise WorkbenchError("an adapter may not be named 'base'")
        read_adapter_config(path)
    check_adapters_base(model_args.model_name_or_path, adapters)  # trained on another base model: refuse
    if not adapters and not eval_args.include_base and not eval_args.merged:
        raise WorkbenchError("nothing to evaluate: choose adapters, or include the base model")
    name = name or timestamped("eval")
    out = run_path(name, Path(root).expanduser() if root else runs_dir())
    argv = eval_argv(model_args, adapters, eval_args, gen, out)
    config = {"model": model_args.to_dict(non_default_only=True) | {"model_name_or_path": model_args.model_name_or_path},
              "adapters": dict(adapters), "eval": eval_args.to_dict(non_default_only=True),
              "generation": gen.to_dict(non_default_only=True)}
    return EvalPlan(name, argv, config, out)


def start_eval(plan: EvalPlan, root: Path | str | None = None):
    """Run the plan as a job (queued behind other device jobs); returns the Job."""
    return jobs.start_job(KIND, plan.name, plan.argv, plan.config, cwd=PROJECT_ROOT, root=root)


# ---- reading results back ---------------------------------------------------------------------------

def list_evaluations(root: Path | str | None = None) -> list[tuple[str, str]]:
    """Finished evaluations in the runs directory as (name, directory), newest first."""
    base = Path(root).expanduser() if root else runs_dir()
    try:
        found = [(p.stat().st_mtime, p) for p in base.iterdir() if (p / "results.json").is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(p.name, str(p)) for _, p in sorted(found, reverse=True)]


def example_rows(out_dir: str | Path, task: str, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Example ``index`` of ``task``: its prompt and references, and each model's prediction and scores."""
    results = load_results(out_dir)
    names = [t["name"] for t in results["tasks"]]
    if task not in names:
        raise WorkbenchError(f"{out_dir}: no task {task!r} in these results (tasks: {', '.join(names)})")
    example: dict[str, Any] = {}
    rows = []
    for model in results["models"]:
        preds = load_predictions(out_dir, model["name"], task)
        if not 0 <= index < len(preds):
            raise WorkbenchError(f"task {task} has {len(preds)} examples; there is no example {index + 1}")
        p = preds[index]
        example = {"id": p["id"], "prompt": p["prompt"], "references": p["references"] if "references" in p else [p["reference"]]}
        rows.append({"model": model["name"], "prediction": p["prediction"], **p["score"]})
    return example, rows


def progress_summary(entry: dict[str, Any] | None) -> str:
    """One line from the last progress.jsonl entry: rows (example × model) done, rows/s, ETA."""
    if not entry:
        return ""
    done, total = entry.get("step", 0), entry.get("total_steps", 0)
    pct = 100 * done / total if total else 0
    eta = entry.get("eta")
    rate = entry.get("rows_per_second", entry.get("examples_per_second")) or 0  # older runs: the old name
    return (f"{done}/{total} rows ({pct:.0f}%) · {entry.get('task', '')} · {rate:.2f} "
            f"rows/s · elapsed {clock(entry.get('elapsed') or 0)} · ETA {clock(eta) if eta is not None else '?'}")

