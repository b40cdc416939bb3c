"""Evaluate tab: score the base model and adapters on translation (BLEU), summarization (ROUGE-1) and QA (EM).

The work is ``python -m workbench eval`` run as a Job (:mod:`workbench.evaluate.launch`); this module builds
the form, starts the job, follows it (:mod:`workbench.ui.runwatch`), and shows what the run wrote: the matrix
(best value per row highlighted), a grouped bar chart, the metric definitions, an example browser and the CSV.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from workbench.config.base import WorkbenchError
from workbench.config.eval import EvalArgs
from workbench.config.generation import GenerationArgs
from workbench.evaluate.launch import (KIND as EVAL_KIND, EvalPlan, example_rows, list_evaluations, plan_eval,
                                       progress_summary, start_eval)
from workbench.evaluate.runner import load_results
from workbench.evaluate.tasks import BUILTIN, METRICS, load_examples
from workbench.data.registry import dataset_names
from workbench.export.merge import list_exported_models
from workbench.paths import default_dataset_dir
from workbench.ui.binding import bind
from workbench.ui.context import (
    ADAPTERS_VERSION,
    DATASETS_VERSION,
    RUNS_VERSION,
    AppContext,
    adapter_choices,
    adapter_map,
    adapter_picker_update,
    error_text,
    model_args_from,
    model_choices,
)
from workbench.ui.forms import collect, option_components
from workbench.ui.i18n import T, message, say
from workbench.ui.runwatch import RunWatcher, abort_watched

ADVANCED_FIELDS = ("include_base", "merged", "template", "bleu_tokenize", "rouge_cjk", "no_answer_phrase",
                   "dataset_dir")
# Optional numbers (None = "all" / "the task's default" / "no limit") are shown as 0: an empty gr.Number
# reaches the server as 0, which its minimum check would refuse.
ZERO_MEANS_UNSET = ("max_samples", "max_new_tokens", "max_prompt_len")
POLL_SECONDS = 1.5
# The evaluation job started here, or after a page reload the one under way.
RUN_WATCHER = RunWatcher(EVAL_KIND, log_lines=20)
COLORS = ("#64748b", "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777")
BEST_STYLE = "background-color: #bbf7d0; font-weight: bold"
TASK_LABELS = {
    "translation": T("Translation zh→en (BLEU)", "翻译 中→英（BLEU）"),
    "summarization": T("Summarization (ROUGE-1)", "摘要（ROUGE-1）"),
    "qa": T("Question answering (EM)", "问答（EM）"),
}
# Data files a task of your own may be picked from (what evaluate.tasks reads; .zh/.en: line-aligned text).
TASK_FILE_TYPES = [".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".zh", ".en"]
OWN_HEADERS = ["task", "data", "metric"]
MATRIX_HEADERS = ["task", "metric", "base"]
EXAMPLE_HEADERS = ["model", "prediction"]
_TASK_NAME = re.compile(r"[^A-Za-z0-9_-]+")

STARTED = message("Evaluation job started:", "评测任务已启动：")
QUEUED = message("Queued behind the running job:", "正在排队，等待当前任务结束：")
EVALUATING = message("Evaluating…", "正在评测……")
FINISHED = message("Finished; results in", "已完成，结果在")
FAILED = message("Failed:", "失败：")
TASK_ADDED = message("Task added; it is evaluated with the others:", "已添加任务，将与其他任务一起评测：")
NO_DATA = message("pick a registered dataset or upload a data file for the task", "请为任务选择已注册的数据集或上传数据文件")


# ---- request ----------------------------------------------------------------------------------------

def task_list(selected: list[str] | None, own: list[dict] | None) -> tuple[str, str | None]:
    """Picked built-in tasks plus the tasks added under "Your own tasks" → (``task``, ``metric``) as the eval
    command takes them. An added task named like a built-in one replaces its demo set (and its metric)."""
    own = list(own or [])
    by_name = {row["task"]: row for row in own}
    items = [f"{t}={by_name[t]['data']}" if t in by_name else t for t in (selected or [])]
    items += [f"{row['task']}={row['data']}" for row in own if row["task"] not in (selected or [])]
    if not items:
        raise WorkbenchError("choose at least one task")
    metrics = [f"{row['task']}={row['metric']}" for row in own]
    return ",".join(items), ",".join(metrics) or None


def plan_from_form(model: str, dtype: str, quantization: str, adapters: list[str] | None, tasks: list[str] | None,
                   own: list[dict] | None, values: dict[str, Any]) -> EvalPlan:
    model_args = model_args_from(model, dtype, quantization)
    values = {k: (None if k in ZERO_MEANS_UNSET and not v else v) for k, v in values.items()}
    if isinstance(values.get("merged"), (list, tuple)):  # the merged-models picker: directories or NAME=DIR
        values["merged"] = ",".join(str(m).strip() for m in values["merged"] if str(m).strip())
    task, metric = task_list(tasks, own or None)
    eval_args = collect(EvalArgs, {**values, "task": task, "metric": metric})
    gen = GenerationArgs(max_new_tokens=eval_args.max_new_tokens or 256)
    return plan_eval(model_args, adapter_map(adapters), eval_args, gen)


# ---- tasks of your own ----------------------------------------------------------------------------------

def dataset_folder(value: str | None) -> Path:
    text = str(value or "").strip()
    return Path(text).expanduser() if text else default_dataset_dir()


def own_table(own: list[dict] | None) -> pd.DataFrame:
    rows = [[row["task"], row["shown"], METRICS[row["metric"]][1]] for row in own or []]
    return pd.DataFrame(rows, columns=OWN_HEADERS)


def picked_data(registered: str | None, files: list[str] | None) -> tuple[str, str, str | None]:
    """(data as the eval command reads it, how to show it, the uploaded file to name in errors) from the picked
    registered dataset or uploaded file(s); two uploaded files are a line-aligned SRC+TGT translation pair."""
    files = [str(f) for f in (files or []) if f]
    if files:
        if len(files) > 2:
            raise WorkbenchError(f"{len(files)} files picked: pick one data file, or two line-aligned text files "
                                 "(source and target) for translation")
        if len(files) == 2:
            files.sort(key=lambda f: Path(f).suffix.lower() == ".en")  # zh→en: the English target second
        names = [Path(f).name for f in files]
        if any("," in f for f in files):  # the command's --task list is comma-separated
            raise WorkbenchError(f"{' + '.join(names)}: a file name with a comma cannot be a task's data; rename it")
        return "+".join(files), " + ".join(f"{n} (uploaded)" for n in names), files[0]
    name = str(registered or "").strip()
    if not name:
        raise WorkbenchError(NO_DATA)
    return name, name, None


def on_add_task(own: list[dict] | None, registered: str | None, files: list[str] | None, metric: str | None,
                task: str | None, folder: str | None):
    """Add a task of your own: its data is read (a few rows) at once, so a bad file is named now, not in the job."""
    own = list(own or [])
    upload = None
    try:
        data, shown, upload = picked_data(registered, files)
        default = Path(upload).stem if upload else Path(data).stem
        name = (task or "").strip() or _TASK_NAME.sub("_", default).strip("_") or "task"
        if _TASK_NAME.search(name):
            raise WorkbenchError(f"task name {name!r}: use letters, digits, '_' and '-'")
        if metric not in METRICS:
            raise WorkbenchError(f"choose the task's metric ({', '.join(METRICS)})")
        if any(row["task"] == name for row in own):
            raise WorkbenchError(f"a task named {name!r} is already added; give this one another name")
        examples, _ = load_examples(name, data, dataset_dir=str(dataset_folder(folder)), max_samples=3)
        if not examples:
            raise WorkbenchError(f"{shown}: no examples to evaluate")
    except Exception as exc:
        return own, gr.update(), gr.update(), error_text(exc, upload=upload), gr.update(), gr.update()
    own.append({"task": name, "data": data, "metric": metric, "shown": shown})
    return (own, own_table(own), gr.update(choices=[r["task"] for r in own], value=None),
            say(f"✅ {TASK_ADDED} **{name}** · {shown} · {METRICS[metric][1]}"), None, "")


def on_remove_task(own: list[dict] | None, names: list[str] | None):
    own = [row for row in own or [] if row["task"] not in (names or [])]
    return own, own_table(own), gr.update(choices=[r["task"] for r in own], value=[]), ""


def on_registered_refresh(folder: str | None, _version=None):
    """The registered datasets of the Evaluate tab's dataset folder (and one saved in the Data tab at once)."""
    return gr.update(choices=dataset_names(dataset_folder(folder)))


# ---- results ----------------------------------------------------------------------------------------

def matrix_styler(results: dict):
    """The matrix as a pandas Styler: two decimals, the best model per row highlighted."""
    header, rows = results["matrix"]["header"], results["matrix"]["rows"]
    frame = pd.DataFrame(rows, columns=header)
    models = header[2:]

    def best(row):
        values = [row[m] for m in models]
        top = max(v for v in values if v is not None) if any(v is not None for v in values) else None
        distinct = len({v for v in values if v is not None}) > 1
        return ["" if c not in models or not distinct or row[c] != top else BEST_STYLE for c in row.index]

    return frame.style.apply(best, axis=1).format({m: "{:.2f}" for m in models})


def bar_figure(results: dict) -> go.Figure:
    """Grouped bars: one group per task (its main metric), one bar per model."""
    header, rows = results["matrix"]["header"], results["matrix"]["rows"]
    models = header[2:]
    tasks = [r for r in rows if r[0] != "mean"]
    x = [f"{r[0]} ({r[1]})" for r in tasks]
    fig = go.Figure()
    for i, model in enumerate(models):
        fig.add_trace(go.Bar(name=model, x=x, y=[r[2 + i] for r in tasks], marker_color=COLORS[i % len(COLORS)],
                             text=[f"{r[2 + i]:.1f}" for r in tasks], textposition="outside"))
    fig.update_layout(barmode="group", height=380, template="plotly_white", yaxis_title="score (0–100)",
                      margin=dict(l=50, r=20, t=30, b=40), legend=dict(orientation="h", y=-0.15))
    return fig


def definitions_text(results: dict) -> str:
    lines = [f"- **{t['name']}** — {t['metric_label']} on `{t['dataset']}` ({t['examples']} examples): {t['definition']}"
             for t in results["tasks"]]
    timing = results.get("timing", {})
    rate = timing.get("rows_per_second", timing.get("examples_per_second"))  # older results: the old name
    if rate:
        lines.append(f"- generation: {timing['rows']} rows (examples × models) in {timing['generate_seconds']:.1f}s, "
                     f"{rate:.2f} rows/s")
    return "\n".join(lines)


def example_view(out_dir: str, task: str, index: int) -> tuple[str, Any]:
    example, rows = example_rows(out_dir, task, index)
    refs = example["references"] or ["(no answer: the question is unanswerable)"]
    text = (f"**Example {index + 1}** (`{example['id']}`)\n\n**Prompt**\n\n```\n{example['prompt']}\n```\n\n"
            + "**Reference" + ("s" if len(refs) > 1 else "") + "**: " + " · ".join(refs))
    frame = pd.DataFrame(rows)
    numbers = [c for c in frame.columns if c not in ("model", "prediction")]
    return text, frame.round({c: 2 for c in numbers})


# ---- handlers (build binds the names of the option inputs) ----------------------------------------------

def plan_from_inputs(names: list[str], args) -> EvalPlan:
    model_v, dtype_v, quant_v, adapters_v, tasks_v, own_v, *rest = args
    return plan_from_form(model_v, dtype_v, quant_v, adapters_v, tasks_v, own_v, dict(zip(names, rest)))


def on_preview(names: list[str], *args):
    """The command for the form; a ❌ left by a Start that failed goes once the form makes a valid command."""
    *args, status_v = args
    try:
        command = plan_from_inputs(names, args).command()
    except WorkbenchError as exc:
        return f"# {exc}", gr.update()
    return command, "" if str(status_v or "").startswith("❌") else gr.update()


def on_start(names: list[str], *args):
    try:
        p = plan_from_inputs(names, args)
        job = start_eval(p)
    except Exception as exc:  # shown in the tab; nothing was started
        return None, error_text(exc), "", ""
    return ({"name": job.name, "out": str(p.output_dir)}, say(f"⏳ {STARTED} `{job.name}` → `{p.output_dir}`"),
            "", job.tail_log(20))


def show_results(out_dir: str | None):
    empty = (pd.DataFrame(columns=MATRIX_HEADERS), None, "", None, gr.update(choices=[], value=None), 1, "",
             pd.DataFrame(columns=EXAMPLE_HEADERS))
    if not out_dir:
        return empty
    try:
        results = load_results(out_dir)
    except WorkbenchError as exc:
        return (None, None, error_text(exc), *empty[3:])
    first = results["tasks"][0]
    text, table = example_view(out_dir, first["name"], 0)
    return (matrix_styler(results), bar_figure(results), definitions_text(results),
            f"{out_dir}/matrix.csv", gr.update(choices=[t["name"] for t in results["tasks"]], value=first["name"]),
            1, text, table)


def on_browse(out_dir: str | None, task: str | None, index: float | None, step: int = 0):
    """Show example ``index + step`` (1-based, kept within the task's examples)."""
    if not out_dir or not task:
        return gr.update(), "", None
    try:
        count = next(t["examples"] for t in load_results(out_dir)["tasks"] if t["name"] == task)
        i = min(max(int(index or 1) + step, 1), count)
        text, table = example_view(out_dir, task, i - 1)
    except (WorkbenchError, StopIteration) as exc:
        return gr.update(), error_text(exc) if isinstance(exc, WorkbenchError) else "", None
    return i, text, table


def on_browse_task(out_dir: str | None, task: str | None):
    return on_browse(out_dir, task, 1)


def on_previous(out_dir: str | None, task: str | None, index: float | None):
    return on_browse(out_dir, task, index, -1)


def on_next(out_dir: str | None, task: str | None, index: float | None):
    return on_browse(out_dir, task, index, 1)


def on_tick(watch):
    """Follow the evaluation job (after a page reload, the one under way) until it ends; then pick its results."""
    try:
        snap = RUN_WATCHER.tick(watch)
    except WorkbenchError as exc:
        return (None, error_text(exc), "", gr.update(), gr.update())
    if snap is None:
        return (None, *(gr.update(),) * 4)
    watch = {"out": str(snap.path), **snap.watch}
    line = progress_summary(snap.entries[-1] if snap.entries else None)
    if snap.state == "queued":
        where = snap.status.get("queue_position")
        return (watch, say(f"⏳ {QUEUED} `{watch['name']}`{f' (#{where})' if where else ''}"),
                "", snap.log_tail, gr.update())
    if snap.state == "running":
        return (watch, say(f"⏳ {EVALUATING} `{watch['name']}`"), line, snap.log_tail, gr.update())
    if snap.state == "finished":
        return (None, say(f"✅ {FINISHED} `{watch['out']}`"), line, snap.log_tail,
                gr.update(choices=list_evaluations(), value=watch["out"]))
    lead = f"{str(snap.state).capitalize()}:" if snap.state != "failed" else FAILED
    return (None, say(f"❌ {lead} {snap.status.get('error') or 'see the log'}"), line, snap.log_tail, gr.update())


def on_abort(watch):
    return say(abort_watched(watch))


def on_refresh():
    """Adapters from finished runs; base models from the registry and the exports (a merged model too)."""
    return (gr.update(choices=adapter_choices()), gr.update(choices=model_choices()),
            gr.update(choices=list_exported_models()))


def on_runs_refresh():
    return gr.update(choices=list_evaluations())


def follow_top_model(model: str):
    return gr.update(value=model)


# ---- the tab ----------------------------------------------------------------------------------------

def build(ctx: AppContext) -> None:
    version = ctx.version(ADAPTERS_VERSION)  # bumped when an export or a combined adapter finishes
    runs_version = ctx.version(RUNS_VERSION)  # bumped when a training run finishes
    job_state = gr.State(None)  # the watch of the job (runwatch) and its output directory "out"

    gr.Markdown(T(
        "Score the base model and adapters on the same examples. The base and all adapters answer in the same "
        "batches, so the model is loaded once. **BLEU**: sacreBLEU corpus BLEU (13a tokenizer for English "
        "targets, zh for Chinese), 0–100. **ROUGE-1**: rouge-score F-measure averaged over examples, 0–100 "
        "(Chinese: one token per character). **EM**: SQuAD v2.0 exact match (official normalisation, best over "
        "the gold answers, 'unanswerable' = no answer), 0–100. Runs as a job; demo sets are used unless you "
        "give other data.",
        "在同一批样本上评测基座模型和适配器。基座与所有适配器在同一批次中生成，模型只加载一次。**BLEU**：sacreBLEU "
        "语料级 BLEU（英文目标用 13a 分词，中文用 zh），0–100。**ROUGE-1**：rouge-score F 值按样本平均，0–100（中文按字切分）。"
        "**EM**：SQuAD v2.0 精确匹配（官方归一化，取多个标准答案中的最好值，“unanswerable” 视为无答案），0–100。"
        "作为任务运行；默认使用示例数据集。"))
    with gr.Column(elem_id="wb-eval"):
        with gr.Row(equal_height=True):
            model = gr.Dropdown(choices=model_choices(), value="smollm2-135m-instruct", allow_custom_value=True,
                                label=T("Base model", "基座模型"), scale=2, elem_id="wb-eval-model")
            adapters = gr.Dropdown(choices=adapter_choices(), value=[], multiselect=True, allow_custom_value=True,
                                   label=T("Adapters (finished runs, or type a directory)",
                                           "适配器（已完成的训练，或输入目录）"), scale=3, elem_id="wb-eval-adapters")
            refresh = gr.Button(T("Refresh", "刷新"), scale=0, min_width=90, elem_id="wb-eval-refresh")
        tasks = gr.CheckboxGroup(choices=[(label, name) for name, label in TASK_LABELS.items()],
                                 value=list(BUILTIN), label=T("Tasks", "任务"), elem_id="wb-eval-tasks")
        with gr.Row():
            main_inputs = {
                "max_samples": gr.Number(value=20, minimum=0, precision=0, elem_id="opt-max_samples",
                                         label=T("Max samples per task", "每个任务的最大样本数"),
                                         info=T("The first N examples of each task; 0: all", "每个任务的前 N 个样本；0 表示全部")),
                **option_components(EvalArgs, only=("batch_size",)),
                "max_new_tokens": gr.Number(value=0, minimum=0, precision=0, elem_id="opt-max_new_tokens",
                                            label=T("Max new tokens", "最大生成长度"),
                                            info=T("Most tokens per answer; 0: the task's default (translation 128, "
                                                   "summarization 128, QA 32)", "每个回答的最大 token 数；0 表示任务默认值")),
            }
        own_state = gr.State([])  # the tasks of your own: {"task", "data", "metric", "shown"}
        with gr.Accordion(T("Your own tasks", "自定义任务"), open=False, elem_id="wb-eval-own"):
            gr.Markdown(T(
                "Pick a registered dataset or upload a data file (alpaca or chat rows with answers, the official "
                "SQuAD json, CNN/DailyMail or WMT rows, or two line-aligned text files for translation), choose "
                "the metric, and add it. A task named translation, summarization or qa evaluates that task on "
                "your data instead of the demo set.",
                "选择已注册的数据集或上传数据文件（带答案的 alpaca 或对话数据、SQuAD 官方 json、CNN/DailyMail 或 WMT 数据，"
                "或翻译用的两个逐行对齐的文本文件），选择指标后添加。任务名为 translation、summarization 或 qa 时，"
                "用你的数据代替该任务的示例数据集。"))
            with gr.Row(equal_height=True):
                own_registered = gr.Dropdown(
                    choices=dataset_names(default_dataset_dir()), value=None, allow_custom_value=True,
                    label=T("Registered dataset", "已注册的数据集"), scale=2, elem_id="wb-eval-own-dataset",
                    info=T("In the dataset folder (advanced options); a path can be typed too",
                           "位于数据集目录（见高级选项）中；也可输入路径"))
                own_file = gr.File(label=T("…or upload a data file", "……或上传数据文件"), file_count="multiple",
                                   file_types=TASK_FILE_TYPES, type="filepath", scale=2, elem_id="wb-eval-own-file")
            with gr.Row(equal_height=True):
                own_metric = gr.Dropdown(choices=[(label, name) for name, (_, label) in METRICS.items()],
                                         value="rouge1", label=T("Metric", "指标"), scale=1,
                                         elem_id="wb-eval-own-metric")
                own_name = gr.Textbox(label=T("Task name", "任务名称"), scale=1, elem_id="wb-eval-own-name",
                                      placeholder=T("the data's name", "默认为数据的名称"))
                own_add = gr.Button(T("Add task", "添加任务"), scale=0, min_width=120, elem_id="wb-eval-own-add")
            own_status = gr.Markdown(elem_id="wb-eval-own-status")
            own_view = gr.Dataframe(value=own_table([]), label=T("Tasks of your own", "自定义任务列表"),
                                    interactive=False, wrap=True, elem_id="wb-eval-own-table")
            with gr.Row(equal_height=True):
                own_remove_pick = gr.Dropdown(choices=[], value=[], multiselect=True, scale=3,
                                              label=T("Tasks to remove", "要移除的任务"), elem_id="wb-eval-own-pick")
                own_remove = gr.Button(T("Remove", "移除"), scale=0, min_width=110, elem_id="wb-eval-own-remove")
        with gr.Accordion(T("Advanced options", "高级选项"), open=False):
            with gr.Row():
                advanced_inputs = option_components(EvalArgs, only=ADVANCED_FIELDS[:ADVANCED_FIELDS.index("merged")])
                # Merged (standalone) models: the exported ones to pick, or a typed directory (or NAME=DIR).
                advanced_inputs["merged"] = gr.Dropdown(
                    choices=list_exported_models(), value=[], multiselect=True, allow_custom_value=True,
                    label=T("Merged models", "合并后的模型"), elem_id="opt-merged",
                    info=T("Standalone models evaluated after the base and adapters: exported models, or type a "
                           "directory (or NAME=DIR)", "在基座和适配器之后评测的独立模型：已导出的模型，或输入目录（或 名称=目录）"))
                advanced_inputs.update(option_components(
                    EvalArgs, only=ADVANCED_FIELDS[ADVANCED_FIELDS.index("merged") + 1:]))
                advanced_inputs["max_prompt_len"] = gr.Number(
                    value=0, minimum=0, precision=0, elem_id="opt-max_prompt_len",
                    label=T("Max prompt length", "提示词最大长度"),
                    info=T("Cut longer prompts' last message to fit this many tokens; 0: no limit",
                           "超过此 token 数的提示词截断其最后一条消息；0 表示不限制"))
        # Wrapped to stay readable; lines=1: a wrapped box otherwise grows to about 600 px.
        command = gr.Code(label=T("Command", "命令"), language="shell", interactive=False, wrap_lines=True, lines=1,
                          max_lines=10, elem_id="wb-eval-command")
        with gr.Row():
            start = gr.Button(T("Start", "开始"), variant="primary", elem_id="wb-eval-start")
            abort = gr.Button(T("Abort", "中止"), variant="stop", elem_id="wb-eval-abort")
        status = gr.Markdown(elem_id="wb-eval-status")
        progress = gr.Markdown(elem_id="wb-eval-progress")
        log = gr.Textbox(label=T("Log", "日志"), lines=6, max_lines=12, interactive=False, autoscroll=True,
                         elem_id="wb-eval-log")

        gr.Markdown(T("### Results", "### 结果"))
        with gr.Row(equal_height=True):
            runs = gr.Dropdown(choices=list_evaluations(), value=None, label=T("Evaluation run", "评测记录"), scale=4,
                               elem_id="wb-eval-runs")
            runs_refresh = gr.Button(T("Refresh", "刷新"), scale=0, min_width=90, elem_id="wb-eval-runs-refresh")
            csv_file = gr.File(label=T("Matrix (CSV)", "结果矩阵（CSV）"), interactive=False, scale=2,
                               elem_id="wb-eval-csv")
        matrix = gr.Dataframe(value=pd.DataFrame(columns=MATRIX_HEADERS),
                              label=T("Scores (0–100; best per row highlighted)", "得分（0–100，每行最佳值高亮）"),
                              interactive=False, elem_id="wb-eval-matrix")
        chart = gr.Plot(label=T("Scores by task", "各任务得分"), elem_id="wb-eval-chart")
        definitions = gr.Markdown(elem_id="wb-eval-definitions")
        gr.Markdown(T("### Examples", "### 样例"))
        with gr.Row():
            browse_task = gr.Dropdown(choices=[], label=T("Task", "任务"), scale=1, elem_id="wb-eval-browse-task")
            browse_index = gr.Number(value=1, precision=0, minimum=1, label=T("Example number", "样例编号"), scale=1,
                                     elem_id="wb-eval-browse-index")
            prev_button = gr.Button(T("◀ Previous", "◀ 上一个"), scale=0, min_width=110, elem_id="wb-eval-prev")
            next_button = gr.Button(T("Next ▶", "下一个 ▶"), scale=0, min_width=110, elem_id="wb-eval-next")
        example_text = gr.Markdown(elem_id="wb-eval-example")
        example_table = gr.Dataframe(value=pd.DataFrame(columns=EXAMPLE_HEADERS),
                                     label=T("Each model's answer and its scores", "各模型的回答与得分"),
                                     interactive=False, wrap=True, elem_id="wb-eval-example-table")
    timer = gr.Timer(POLL_SECONDS, active=True)

    value_inputs = {**main_inputs, **advanced_inputs}
    names = list(value_inputs)
    form = [model, ctx.dtype, ctx.quantization, adapters, tasks, own_state, *value_inputs.values()]
    preview = bind(on_preview, names)
    result_outputs = [matrix, chart, definitions, csv_file, browse_task, browse_index, example_text, example_table]
    browse_inputs = [runs, browse_task, browse_index]
    browse_outputs = [browse_index, example_text, example_table]

    gr.on([c.change for c in form], preview, inputs=[*form, status], outputs=[command, status])
    # The command for the form as first shown (the change events only follow edits).
    command.value = preview(*[c.value for c in form], None)[0]
    # Then the command with the next run's name (None for the status: what Start said stays).
    start.click(bind(on_start, names), inputs=form, outputs=[job_state, status, progress, log]).then(
        preview, inputs=[*form, gr.State(None)], outputs=[command, status])
    folder = advanced_inputs["dataset_dir"]
    own_add.click(on_add_task, inputs=[own_state, own_registered, own_file, own_metric, own_name, folder],
                  outputs=[own_state, own_view, own_remove_pick, own_status, own_file, own_name])
    own_remove.click(on_remove_task, inputs=[own_state, own_remove_pick],
                     outputs=[own_state, own_view, own_remove_pick, own_status])
    folder.change(on_registered_refresh, inputs=folder, outputs=own_registered)
    ctx.version(DATASETS_VERSION).change(on_registered_refresh, inputs=folder, outputs=own_registered)
    timer.tick(on_tick, inputs=job_state, outputs=[job_state, status, progress, log, runs])
    abort.click(on_abort, inputs=job_state, outputs=status)
    pickers = [adapters, model, advanced_inputs["merged"]]
    for trigger in (refresh.click, version.change):  # Refresh, or an export / combined adapter finished
        trigger(on_refresh, outputs=pickers)
    runs_version.change(adapter_picker_update, outputs=adapters)  # a training run finished
    ctx.model.change(follow_top_model, inputs=ctx.model, outputs=model)
    runs_refresh.click(on_runs_refresh, outputs=runs)
    runs.change(show_results, inputs=runs, outputs=result_outputs)
    browse_task.input(on_browse_task, inputs=[runs, browse_task], outputs=browse_outputs)
    browse_index.submit(on_browse, inputs=browse_inputs, outputs=browse_outputs)
    prev_button.click(on_previous, inputs=browse_inputs, outputs=browse_outputs)
    next_button.click(on_next, inputs=browse_inputs, outputs=browse_outputs)
