"""Train tab: a form generated from the training option dataclasses, Preview / Start / Abort, live
progress of the run (status, progress bar, loss curve, log tail) and a table of all runs with
curve overlays and config diffs.

The form is built from the options' metadata (``group`` decides the section); the run is planned and
validated by :mod:`workbench.train.plan` and started by :mod:`workbench.train.launch` as a
:mod:`workbench.jobs` job, and everything shown here is read back from the run directory by
:mod:`workbench.ui.runwatch` — so a page reload or a restart of the app re-attaches.
"""

from __future__ import annotations

import shlex
import time
import traceback
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from workbench.config.base import OptionError, WorkbenchError, coerce, option_fields
from workbench.config.train import IGNORED_KEYS
from workbench.data.registry import dataset_names
from workbench.jobs import runs
from workbench.jobs import store as jobs
from workbench.paths import project_data_dir
from workbench.rundir import CONFIG_FILE, default_run_name, format_duration
from workbench.train import launch as train_launch
from workbench.train import plan as train_plan
from workbench.train import presets
from workbench.train.distributed import launched_train_argv
from workbench.ui.binding import bind
from workbench.ui.context import DATASETS_VERSION, RUNS_VERSION, AppContext, error_text
from workbench.ui.forms import NONE_CHOICE, form_value, label_for, option_components
from workbench.ui.i18n import T
from workbench.ui.plots import loss_figure, overlay_figure, progress_html
from workbench.ui.runwatch import RunWatcher, Snapshot, new_watch, run_status

# Options set in the shared top bar, not in this form.
TOP_BAR = ("model_name_or_path", "infer_dtype", "quantization_bit", "template")
# The run directory is the output directory; its name is the run name.
SKIP = ("output_dir", "overwrite_output_dir", "run_name")
GROUPS = [  # (group metadata value, English title, Chinese title, open)
    ("basic", "Basics", "基础设置", True),
    ("lora", "LoRA", "LoRA", False),
    ("freeze", "Freeze tuning (train only some layers)", "冻结微调（只训练部分层）", False),
    ("rlhf", "Preference training (RM / DPO)", "偏好训练（RM / DPO）", False),
    ("quantization", "Quantization (QLoRA) — the number of bits is chosen in the top bar",
     "量化（QLoRA）——比特数在顶部栏选择", False),
    ("eval", "Evaluation split", "验证集", False),
    ("template", "Prompt formatting and loss masking", "提示格式与损失掩码", False),
    ("output", "Checkpoints, resume and logging", "检查点、恢复与日志", False),
    ("distributed", "Distributed (processes, DeepSpeed)", "分布式（进程数、DeepSpeed）", False),
    ("advanced", "Advanced", "高级", False),
]
BASIC_ORDER = ("stage", "finetuning_type", "dataset", "dataset_dir", "num_train_epochs", "max_steps", "learning_rate",
               "per_device_train_batch_size", "gradient_accumulation_steps", "cutoff_len", "max_samples",
               "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "bf16", "fp16")
PER_ROW = 4
LOG_LINES = 30
# The run shown: the one picked or started here, else the training job under way, else the newest run.
RUN_WATCHER = RunWatcher("train", log_lines=LOG_LINES, any_run=True)
RUN_COLUMNS = ["Run", "Stage", "Model", "Dataset", "Status", "Progress", "Final loss", "Started", "Duration"]
# The deepspeed option: "" is no DeepSpeed, the others are presets/deepspeed/; a JSON path can be typed too.
DEEPSPEED_CHOICES = ["", "z2", "z3", "z2_offload", "z3_offload"]


# ---- the form ----------------------------------------------------------------------------------------

def form_fields() -> dict[str, tuple[type, str]]:
    """Option name → (declaring class, section), in declaration order; first declaration wins."""
    known = {g for g, *_ in GROUPS}
    out: dict[str, tuple[type, str]] = {}
    for cls in train_plan.train_option_classes():
        for name, f in option_fields(cls).items():
            if name in out or name in TOP_BAR or name in SKIP or not f.metadata.get("ui", True):
                continue
            group = f.metadata.get("group", "basic")
            out[name] = (cls, group if group in known else "advanced")
    return out


def section_names(fields: dict[str, tuple[type, str]], group: str) -> list[str]:
    names = [n for n, (_, g) in fields.items() if g == group]
    if group == "basic":
        names = [n for n in BASIC_ORDER if n in names] + [n for n in names if n not in BASIC_ORDER]
    return names


def deepspeed_dropdown(cls: type) -> gr.Dropdown:
    """The deepspeed option as a dropdown of the shipped presets that still takes a typed JSON path."""
    meta = dict(option_fields(cls)["deepspeed"].metadata)
    return gr.Dropdown(choices=DEEPSPEED_CHOICES, value="", allow_custom_value=True,
                       label=label_for("deepspeed", meta), info=T(meta["help"], meta.get("help_zh")),
                       elem_id="opt-deepspeed")


def _dataset_dir(value: Any) -> Path:
    text = form_value(value)
    return Path(str(text)).expanduser() if text else project_data_dir()


def collect_values(names: list[str], raw: list[Any], model: Any, template: Any, dtype: Any,
                   quantization: Any) -> dict[str, Any]:
    """Raw component values → a flat option mapping (YAML keys). An emptied box of an option that
    needs a value is an error naming that option, never a silent default."""
    defaults = train_plan.option_defaults()
    dropdowns = {n for cls in train_plan.train_option_classes() for n, f in option_fields(cls).items()
                 if f.metadata.get("choices")}
    values: dict[str, Any] = {
        "model_name_or_path": str(model or "").strip(),
        "infer_dtype": dtype or "auto",
        "quantization_bit": form_value(quantization),
        "template": form_value(template) or "auto",
    }
    for name, value in zip(names, raw):
        if name == "dataset" and isinstance(value, (list, tuple)):
            value = ",".join(str(v).strip() for v in value if str(v).strip())
        # "none" is the not-set entry of a dropdown; in a text box it is just text (report_to: none)
        value = form_value(value) if name in dropdowns or not isinstance(value, str) else (value.strip() or None)
        if value is None and defaults.get(name) is not None:
            raise OptionError(name, "a value is required")
        values[name] = value
    if not values["model_name_or_path"]:
        raise OptionError("model_name_or_path", "pick a model in the top bar")
    order = list(defaults)
    return dict(sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def component_value(component: Any, name: str, value: Any) -> Any:
    """An option value as the component generated for it shows it."""
    if name == "dataset":
        return [v.strip() for v in str(value or "").split(",") if v.strip()]
    if name == "deepspeed":  # its dropdown's not-set entry is "", not "none"
        return "" if value is None else str(value)
    if isinstance(component, gr.Dropdown):
        return NONE_CHOICE if value is None else str(value)
    if isinstance(component, gr.Number):
        return value
    if isinstance(component, gr.Checkbox):
        return bool(value)
    if value is None:
        return ""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def preview_command(plan: train_plan.TrainPlan) -> str:
    """The command Start runs; for a launched run, a second line (a shell comment) with the
    ``accelerate launch`` command it expands to (as ``workbench.train.cli._launch`` builds it)."""
    if "--launch" not in plan.argv:
        return plan.command
    output_dir = Path(plan.train_config.train.output_dir).expanduser().resolve()
    argv = launched_train_argv(plan.train_config, plan.launch, plan.path / CONFIG_FILE, {}, output_dir)
    return plan.command + "\n# which runs: " + shlex.join(argv)


def _default(cls: type, name: str) -> Any:
    f = option_fields(cls)[name]
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _message(exc: Exception, what: str) -> str:
    return f"❌ **{what}** {error_text(exc, mark=False)}"


# ---- rendering a run -------------------------------------------------------------------------------------

def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _short_model(model: str) -> str:
    return Path(model).name if "/" in model and Path(model).expanduser().exists() else model


def runs_frame() -> pd.DataFrame:
    rows = []
    for s in runs.list_runs():
        status = s.state + (f" (#{s.queue_position})" if s.queue_position else "")
        rows.append([s.name, s.stage, _short_model(s.model), s.dataset, status,
                     f"{s.progress:.0%}" if s.progress is not None else "",
                     f"{s.loss:.4f}" if s.loss is not None else "", _when(s.started), format_duration(s.duration)])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def run_names() -> list[str]:
    return [s.name for s in runs.list_runs()]


def status_markdown(path: Path, st: dict[str, Any], log_tail: str) -> str:
    state = st.get("state")
    name = path.name
    icon = {"queued": "⏳", "running": "🏃", "finished": "✅", "failed": "❌", "aborted": "⏹️"}.get(state, "•")
    lines = [f"{icon} **{name}** — **{state}**"]
    if state == "queued":
        holder = jobs.device_holder()
        ahead = (f"; waiting for **{holder.name}**" + (f" ({holder.kind})" if holder.kind != "train" else "")
                 if holder is not None and holder.name != name else "")
        lines[0] += f" (position {st.get('queue_position') or '?'} in the queue{ahead})"
    elif state == "running" and st.get("pid"):
        lines[0] += f" · pid {st['pid']}"
    if st.get("started"):
        lines.append(f"Started {_when(st['started'])}" + (f", ended {_when(st['ended'])}" if st.get("ended") else "")
                     + (f" · exit code {st['exit_code']}" if st.get("exit_code") is not None else ""))
    if state == "failed":
        lines.append(f"**Error:** {st.get('error') or 'the run failed'}")
        if log_tail:
            tail = "\n".join(log_tail.splitlines()[-12:])
            lines.append("Last lines of log.txt:\n```\n" + tail + "\n```")
    lines.append(f"Output directory: `{path}`")
    return "\n\n".join(lines)


def progress_bar(snap: Snapshot) -> str:
    """The progress bar at the run's last training step."""
    train = [e for e in snap.entries if e.get("kind", "train") == "train"]
    last = train[-1] if train else {}
    st = snap.status
    elapsed = (st.get("ended") or time.time()) - st["started"] if st.get("started") else None
    return progress_html(last.get("step"), last.get("total_steps"), state=str(st.get("state")), elapsed=elapsed,
                         eta=last.get("eta"), tokens_per_second=last.get("tokens_per_second"))


# ---- handlers (build binds the form's option names, its components or the app context) ------------------

def plan_from(names: list[str], name: str, raw: list[Any]) -> train_plan.TrainPlan:
    form, top = raw[:len(names)], raw[len(names):]
    return train_plan.plan_training(collect_values(names, form, *top), name)


def on_preview(names: list[str], name, *raw):
    try:
        plan = plan_from(names, name, list(raw))
    except Exception as exc:
        return _message(exc, "Cannot preview:"), gr.skip(), gr.skip(), gr.skip()
    notes = "".join(f"\n\n⚠️ {w}" for w in plan.warnings)
    return ("This is what **Start** runs." + notes, preview_command(plan), plan.yaml, gr.update(open=True))


def on_start(ctx: AppContext, names: list[str], name, *raw):
    try:
        plan = plan_from(names, name, list(raw))
        train_plan.check_train_memory(plan, ctx.manager.current())
        job = train_launch.start_training(plan)
    except Exception as exc:
        return _message(exc, "Cannot start:"), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    st = job.status()
    if st.get("state") == "queued":
        text = (f"⏳ **{job.name}** is queued (position {st.get('queue_position')}): it starts when the "
                "training run ahead of it ends.")
    else:
        text = f"🚀 Started **{job.name}**."
    text += "".join(f"\n\n⚠️ {w}" for w in plan.warnings)
    choices = run_names()
    return (text, new_watch(job.name), preview_command(plan), plan.yaml,
            gr.update(value=default_run_name(plan.train_config.finetuning.stage,
                                             plan.train_config.finetuning.finetuning_type)),
            gr.update(choices=choices, value=job.name))


def on_abort(watch):
    name = (watch or {}).get("name")
    job = None
    if name:
        try:
            job = jobs.get_job(name)
        except WorkbenchError:
            job = None
    if job is None or not job.is_active():
        job = jobs.active_job("train")
    if job is None:
        return "Nothing to abort: no training run is running or queued."
    was = job.state
    try:
        st = job.abort()
    except Exception as exc:
        return _message(exc, "Cannot abort:")
    if was == "queued":
        return f"⏹️ **{job.name}** was removed from the queue."
    return f"⏹️ **{job.name}**: {st.get('state')}."


def on_tick(ctx: AppContext, watch, version):
    """The run shown (or the one to follow now) → its status, progress bar, loss curve and log; the runs table
    as it moves; the runs version bumped when a run ended or an adapter appeared."""
    watch = watch or new_watch(None)
    snap = RUN_WATCHER.tick(watch)
    if snap is None:
        if watch.get("name"):  # the run shown was deleted
            return (new_watch(None), T("No training run yet.", "还没有训练运行。"),
                    progress_html(None, None, state="none"), None, "", gr.skip(), gr.skip())
        return (gr.skip(),) * 7
    state = snap.watch
    fig = gr.skip()
    if snap.progressed or not state.get("plotted"):
        fig = loss_figure(snap.entries, title=snap.path.name)
        state["plotted"] = True
    adapters = [name for name, _, _ in runs.list_adapters()]
    new_adapter = watch.get("adapters") is not None and adapters != watch.get("adapters")
    state["adapters"] = adapters
    state["ticks"] = state.get("ticks", 0) + 1
    # The table moves with the run, but not every tick: a redraw resets its scroll position.
    moved = snap.changed or (snap.state == "running" and state["ticks"] % 5 == 0)
    table = runs_frame() if moved else gr.skip()
    # Any run that finished (not only the one shown) refreshes the adapter pickers of the other tabs.
    bump = version + 1 if new_adapter or snap.ended else gr.skip()
    if snap.changed and snap.state == "finished":
        _refresh_other_tabs(ctx)
    return (state, status_markdown(snap.path, snap.status, snap.log_tail), progress_bar(snap), fig, snap.log_tail,
            table, bump)


def _refresh_other_tabs(ctx: AppContext) -> None:
    for refresh in ctx.refreshers:
        try:
            refresh()
        except Exception:
            traceback.print_exc()


def on_pick(name):
    return new_watch(name, pinned=True) if name else gr.skip()


def on_refresh():
    names_now = run_names()
    return runs_frame(), gr.update(choices=names_now), gr.update(choices=names_now)


def on_compare(selected):
    selected = [s for s in (selected or []) if s]
    if not selected:
        return None, None
    paths = []
    for name in selected:
        path = runs.run_path_for(name)
        if path is not None and path.is_dir():
            paths.append(path)
    if not paths:
        return None, None
    fig = overlay_figure({p.name: runs.read_curve(p) for p in paths})
    if len(paths) < 2:
        return fig, pd.DataFrame([["(select two or more runs to compare their configs)"]], columns=["option"])
    header, rows = runs.config_diff(paths)
    if not rows:
        rows = [["(no differences)", *[""] * len(paths)]]
    return fig, pd.DataFrame([[str(c) for c in r] for r in rows], columns=header)


def on_delete(watch):
    name = (watch or {}).get("name")
    if not name:
        return gr.update(visible=False), "", "Pick a run under **Show run** first."
    path = runs.run_path_for(name)
    if path is None or not path.is_dir():
        return gr.update(visible=False), "", f"Run {name!r} no longer exists."
    st = run_status(path)
    if st.get("state") in ("queued", "running"):
        return gr.update(visible=False), "", f"❌ **{name}** is {st['state']}: abort it before deleting it."
    return (gr.update(visible=True),
            f"Delete run **{name}** and every file in `{path}` (adapter, checkpoints, logs)? This cannot be undone.",
            "")


def on_confirm(watch, version):
    name = (watch or {}).get("name")
    try:
        path = runs.run_path_for(name)
        if path is None:
            raise WorkbenchError(f"run {name!r} does not exist")
        runs.delete_run(path, force=True)  # the user confirmed deleting adapter and checkpoints
    except Exception as exc:
        return gr.update(visible=False), _message(exc, "Cannot delete:"), gr.skip(), gr.skip(), gr.skip(), \
            gr.skip(), gr.skip()
    names_now = run_names()
    return (gr.update(visible=False), f"🗑️ Deleted **{name}**.", new_watch(None), runs_frame(),
            gr.update(choices=names_now, value=None), gr.update(choices=names_now, value=[]), version + 1)


def on_cancel_delete():
    return gr.update(visible=False), ""


def on_load_preset(components: dict[str, Any], fields: dict[str, tuple[type, str]], name):
    try:
        if not name:
            raise WorkbenchError("pick a preset first")
        values, path = presets.load_preset(name)
    except Exception as exc:
        return [_message(exc, "Cannot load the preset:")] + [gr.skip()] * (len(components) + 4)
    updates = []
    for field_name, component in components.items():
        cls, _ = fields[field_name]
        value = values.get(field_name, _default(cls, field_name))
        updates.append(gr.update(value=component_value(component, field_name, value)))
    top = [
        gr.update(value=values["model_name_or_path"]) if values.get("model_name_or_path") else gr.skip(),
        gr.update(value=values.get("template") or "auto"),
        gr.update(value=values.get("infer_dtype") or "auto"),
        gr.update(value=str(values["quantization_bit"]) if values.get("quantization_bit") else NONE_CHOICE),
    ]
    ignored = [k for k in values if k in IGNORED_KEYS]
    note = f"✅ Loaded preset **{name}** (`{path}`)." + (
        f" Ignored: {', '.join(ignored)}." if ignored else "")
    return [note, *updates, *top]


def on_save_preset(names: list[str], name, *raw):
    try:
        values = collect_values(names, list(raw[:len(names)]), *raw[len(names):])
        for key, value in list(values.items()):  # field-level checks; a preset needs no dataset
            cls = next(c for c in train_plan.train_option_classes() if key in option_fields(c))
            values[key] = coerce(cls, key, value)
        path = presets.save_preset(name, train_plan.compact_config(values))
    except Exception as exc:
        return _message(exc, "Cannot save the preset:"), gr.skip()
    saved = next((k for k, v in presets.list_presets().items() if v == path), path.stem)
    return f"✅ Saved preset **{saved}** to `{path}`.", gr.update(choices=list(presets.list_presets()),
                                                                 value=saved)


def on_dataset_dir(folder, current, _version=None):
    names_now = dataset_names(_dataset_dir(folder))
    keep = [c for c in (current or []) if c in names_now or Path(str(c)).expanduser().exists()]
    return gr.update(choices=names_now, value=keep)


def on_dataset_saved(folder, current):
    return gr.update(value=folder), on_dataset_dir(folder, current)


def on_page_load():
    names_now = run_names()
    return (gr.update(choices=list(presets.list_presets())), gr.update(choices=names_now),
            gr.update(choices=names_now))


# ---- the tab -----------------------------------------------------------------------------------------------

def form_components(fields: dict[str, tuple[type, str]]) -> dict[str, Any]:
    """The option form: one accordion per group, PER_ROW options a row; option name → component."""
    components: dict[str, Any] = {}
    with gr.Column(elem_id="wb-train-form"):
        for group, title_en, title_zh, is_open in GROUPS:
            names = section_names(fields, group)
            if not names:
                continue
            with gr.Accordion(T(title_en, title_zh), open=is_open, elem_id=f"wb-train-group-{group}"):
                for i in range(0, len(names), PER_ROW):
                    with gr.Row():
                        for name in names[i:i + PER_ROW]:
                            components.update(_option_component(fields[name][0], name))
    return components


def _option_component(cls: type, name: str) -> dict[str, Any]:
    if name == "dataset":
        return {name: gr.Dropdown(
            choices=dataset_names(project_data_dir()), value=[], multiselect=True,
            allow_custom_value=True, label=T("Datasets", "数据集"), elem_id="opt-dataset",
            info=T("From dataset_info.json in the dataset folder (register more in the Data tab); several are "
                   "combined", "来自数据集目录中的 dataset_info.json（可在数据标签页注册）；可多选合并"))}
    if name == "deepspeed":
        return {name: deepspeed_dropdown(cls)}
    return option_components(cls, only=[name])


def _follow_dataset_folder(ctx: AppContext, components: dict[str, Any]) -> None:
    """The dataset picker lists the datasets of the folder in dataset_dir, and one saved in the Data tab at once."""
    folder, picker = components["dataset_dir"], components["dataset"]
    folder.change(on_dataset_dir, inputs=[folder, picker], outputs=[picker])
    datasets_version = ctx.version(DATASETS_VERSION)
    data_tab_dir = ctx.extras.get("data_dir")
    if data_tab_dir is None:
        datasets_version.change(on_dataset_dir, inputs=[folder, picker], outputs=[picker])
    else:  # offered from the folder the Data tab saved it into
        datasets_version.change(on_dataset_saved, inputs=[data_tab_dir, picker], outputs=[folder, picker])


def build(ctx: AppContext) -> None:
    runs_version = ctx.version(RUNS_VERSION)
    fields = form_fields()
    watch = gr.State(new_watch(None))

    gr.Markdown(T(
        "Fill in the form (the model, template, precision and quantization come from the top bar), check the exact "
        "command with **Preview**, then **Start**. Runs are processes of their own: they go on if you close or "
        "reload this page, and one training run uses the device at a time — further starts wait in a queue.",
        "填写表单（模型、模板、精度和量化来自顶部栏），用**预览**查看将要运行的确切命令，然后点击**开始**。"
        "训练在独立进程中运行：关闭或刷新页面不会中断；同一时间只有一个训练任务占用设备，其余排队等待。"))
    with gr.Row(equal_height=True):
        run_name = gr.Textbox(value=default_run_name, label=T("Run name", "运行名称"), scale=2,
                              info=T("Also the output directory under the runs directory",
                                     "也是运行目录下的输出目录名"), elem_id="wb-train-run-name")
        preset = gr.Dropdown(choices=list(presets.list_presets()), value=None, label=T("Preset", "预设"), scale=2,
                             elem_id="wb-train-preset")
        load_preset = gr.Button(T("Load preset", "加载预设"), scale=1, elem_id="wb-train-preset-load")
        preset_name = gr.Textbox(label=T("Save as preset", "另存为预设"), scale=2, elem_id="wb-train-preset-name")
        save_preset = gr.Button(T("Save preset", "保存预设"), scale=1, elem_id="wb-train-preset-save")

    components = form_components(fields)
    names = list(components)
    form_inputs = [components[n] for n in names]
    top_inputs = [ctx.model, ctx.template, ctx.dtype, ctx.quantization]

    with gr.Row():
        preview_btn = gr.Button(T("Preview command", "预览命令"), elem_id="wb-train-preview")
        start_btn = gr.Button(T("Start", "开始"), variant="primary", elem_id="wb-train-start")
        abort_btn = gr.Button(T("Abort", "中止"), variant="stop", elem_id="wb-train-abort")
    message = gr.Markdown(elem_id="wb-train-message")
    with gr.Accordion(T("Command and config that Start runs", "开始时运行的命令与配置"), open=False,
                      elem_id="wb-train-preview-box") as preview_box:
        command_box = gr.Textbox(label=T("Command", "命令"), interactive=False, buttons=["copy"],
                                 elem_id="wb-train-command")
        yaml_box = gr.Code(label=CONFIG_FILE, language="yaml", interactive=False, elem_id="wb-train-yaml")

    gr.Markdown(T("### Current run", "### 当前运行"))
    with gr.Row(equal_height=True):
        run_pick = gr.Dropdown(choices=run_names(), value=None, label=T("Show run", "显示运行"), scale=3,
                               elem_id="wb-train-run-pick")
        refresh_btn = gr.Button(T("Refresh", "刷新"), scale=1, elem_id="wb-train-refresh")
    status_md = gr.Markdown(T("No training run yet.", "还没有训练运行。"), elem_id="wb-train-status")
    progress = gr.HTML(progress_html(None, None, state="none"), elem_id="wb-train-progress")
    with gr.Row():
        plot = gr.Plot(label=T("Loss", "损失"), elem_id="wb-train-plot", scale=3)
        log_box = gr.Textbox(label=T("log.txt (last lines)", "log.txt（最后几行）"), lines=16, max_lines=16,
                             interactive=False, autoscroll=True, elem_id="wb-train-log", scale=2)

    gr.Markdown(T("### Runs", "### 全部运行"))
    runs_table = gr.Dataframe(value=runs_frame, headers=RUN_COLUMNS, interactive=False, wrap=True, max_height=360,
                              elem_id="wb-train-runs")
    with gr.Row(equal_height=True):
        compare = gr.Dropdown(choices=run_names(), value=[], multiselect=True, scale=4,
                              label=T("Compare runs (loss curves and config differences)", "对比运行（损失曲线与配置差异）"),
                              elem_id="wb-train-compare")
        delete_btn = gr.Button(T("Delete run…", "删除运行…"), variant="stop", scale=1, elem_id="wb-train-delete")
    with gr.Row(visible=False, elem_id="wb-train-delete-row") as confirm_row:
        confirm_md = gr.Markdown(elem_id="wb-train-delete-question")
        confirm_btn = gr.Button(T("Yes, delete it", "确认删除"), variant="stop", elem_id="wb-train-delete-confirm")
        cancel_btn = gr.Button(T("Cancel", "取消"), elem_id="wb-train-delete-cancel")
    with gr.Row():
        overlay = gr.Plot(label=T("Loss of the selected runs", "所选运行的损失"), elem_id="wb-train-overlay", scale=3)
        diff = gr.Dataframe(value=pd.DataFrame(columns=["option"]), label=T("Options that differ", "不同的选项"),
                            interactive=False, wrap=True, elem_id="wb-train-diff", scale=2)
    timer = gr.Timer(2.0)

    # Raw values (preprocess=False): range and type checks are ours, so errors name the option.
    preview_btn.click(bind(on_preview, names), inputs=[run_name, *form_inputs, *top_inputs],
                      outputs=[message, command_box, yaml_box, preview_box], preprocess=False)
    tick = bind(on_tick, ctx)
    tick_outputs = [watch, status_md, progress, plot, log_box, runs_table, runs_version]
    start_btn.click(bind(on_start, ctx, names), inputs=[run_name, *form_inputs, *top_inputs],
                    outputs=[message, watch, command_box, yaml_box, run_name, run_pick], preprocess=False,
                    concurrency_limit=1).then(
        tick, inputs=[watch, runs_version], outputs=tick_outputs, show_progress="hidden", queue=False)
    abort_btn.click(on_abort, inputs=[watch], outputs=[message])
    timer.tick(tick, inputs=[watch, runs_version], outputs=tick_outputs, show_progress="hidden",
               queue=False)  # a refresh must not wait behind a Start in the queue (nor show its timer)
    run_pick.input(on_pick, inputs=[run_pick], outputs=[watch]).then(
        tick, inputs=[watch, runs_version], outputs=tick_outputs, show_progress="hidden", queue=False)
    refresh_btn.click(on_refresh, outputs=[runs_table, run_pick, compare])
    compare.change(on_compare, inputs=[compare], outputs=[overlay, diff])
    delete_btn.click(on_delete, inputs=[watch], outputs=[confirm_row, confirm_md, message])
    confirm_btn.click(on_confirm, inputs=[watch, runs_version],
                      outputs=[confirm_row, message, watch, runs_table, run_pick, compare, runs_version])
    cancel_btn.click(on_cancel_delete, outputs=[confirm_row, confirm_md])
    load_preset.click(bind(on_load_preset, components, fields), inputs=[preset],
                      outputs=[message, *form_inputs, *top_inputs])
    save_preset.click(bind(on_save_preset, names), inputs=[preset_name, *form_inputs, *top_inputs],
                      outputs=[message, preset], preprocess=False)
    # Every page load sees presets and runs created since the app started (by the CLI too).
    gr.on(triggers=None, fn=on_page_load, inputs=None, outputs=[preset, run_pick, compare])
    if "dataset_dir" in components:
        _follow_dataset_folder(ctx, components)
