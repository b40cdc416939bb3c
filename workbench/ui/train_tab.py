"""Train tab: a form generated from the training option dataclasses, an estimate and Preview / Start / Abort,
right under them the live run (status with what the run is doing, progress bar, loss curve, log tail), and a
table of all runs with curve overlays, config diffs and "load this run's config into the form".

The form is built from the options' metadata (``group`` decides the section); the run is planned, validated
and estimated by :mod:`workbench.train.plan` and started by :mod:`workbench.train.launch` as a
:mod:`workbench.jobs` job, and everything shown here is read back from the run directory by
:mod:`workbench.ui.runwatch` — so a page reload or a restart of the app re-attaches.

The form is kept per browser, in its local storage (written by the browser itself, read back when the page
loads): a reload brings back what was typed, two people on one server do not share a draft, and no keystroke
costs a request. A server-side draft would be one draft for every browser. (``gr.BrowserState`` is not used: it
reads the storage only once its tab is shown, after the page's load events have run.)
"""

from __future__ import annotations

import json
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
from workbench.paths import default_dataset_dir
from workbench.rundir import CONFIG_FILE, default_run_name, format_duration
from workbench.train.callbacks import EVAL_RISES_WARN, eval_loss_rises, eval_rise_advice
from workbench.train import launch as train_launch
from workbench.train import plan as train_plan
from workbench.train import presets
from workbench.train.distributed import launched_train_argv
from workbench.ui.binding import bind
from workbench.ui.context import (DATA_FOLDER, DATA_FOLDER_DATASETS, DATASETS_VERSION, RUNS_VERSION, AppContext,
                                  error_text)
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
# The top bar's values a draft keeps (restored only while no model is loaded: the top bar then shows that one).
TOP_KEYS = ("model_name_or_path", "template", "infer_dtype", "quantization_bit")
# Left out when a run's config is loaded into the form: the new run has its own directory and name.
NOT_CLONED = ("output_dir", "run_name", "resume_from_checkpoint", "overwrite_output_dir")
DRAFT_KEY = "workbench:train-form"  # the browser's local storage key of the form's draft


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
    return Path(str(text)).expanduser() if text else default_dataset_dir()


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


def status_markdown(path: Path, st: dict[str, Any], log_tail: str, entries: list[dict[str, Any]] | None = None,
                    phase: dict[str, Any] | None = None) -> str:
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
    now = phase_line(st, entries or [], phase)
    if now:
        lines.append(now)
    if st.get("started"):
        lines.append(f"Started {_when(st['started'])}" + (f", ended {_when(st['ended'])}" if st.get("ended") else "")
                     + (f" · exit code {st['exit_code']}" if st.get("exit_code") is not None else ""))
    rises, losses = eval_loss_rises(entries or [])
    if rises >= EVAL_RISES_WARN:
        lines.append(f"📈 **Overfitting?** {eval_rise_advice(rises, losses)}.")
    if state == "failed":
        lines.append(f"**Error:** {st.get('error') or 'the run failed'}")
        if log_tail:
            tail = "\n".join(log_tail.splitlines()[-12:])
            lines.append("Last lines of log.txt:\n```\n" + tail + "\n```")
    lines.append(f"Output directory: `{path}`")
    return "\n\n".join(lines)


def _train_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("kind", "train") == "train"]


def phase_text(st: dict[str, Any], entries: list[dict[str, Any]], phase: dict[str, Any] | None) -> str | None:
    """What a running run is doing, from its phase.json, while the progress lines do not say it: before the first
    one (starting, tokenising, loading, step 1 and its time), and while it evaluates or saves."""
    if st.get("state") != "running":
        return None
    started = st.get("started") or 0
    if not phase or phase.get("time", 0) < started - 1:  # none yet, or one left by an earlier attempt (a resume)
        return None if _train_entries(entries) else "starting the training process (Python and its libraries load)"
    if _train_entries(entries) and phase.get("phase") not in ("evaluating", "saving"):
        return None
    text = str(phase.get("text") or phase.get("phase"))
    if phase.get("first_step_seconds") is None:
        text += f" — {format_duration(time.time() - phase['time'])} so far"
    return text


def phase_line(st: dict[str, Any], entries: list[dict[str, Any]], phase: dict[str, Any] | None) -> str | None:
    text = phase_text(st, entries, phase)
    return f"⏳ **Now:** {text}" if text else None


def progress_bar(snap: Snapshot) -> str:
    """The progress bar at the run's last training step (before it, what the run is doing)."""
    train = _train_entries(snap.entries)
    last = train[-1] if train else {}
    st = snap.status
    elapsed = (st.get("ended") or time.time()) - st["started"] if st.get("started") else None
    waiting = phase_text(st, snap.entries, snap.phase) if not train else None
    return progress_html(last.get("step"), last.get("total_steps"), state=str(st.get("state")), elapsed=elapsed,
                         eta=last.get("eta"), tokens_per_second=last.get("tokens_per_second"), waiting=waiting)


def estimate_markdown(est: train_plan.RunEstimate) -> str:
    """The estimate of a planned run, shown next to Start."""
    lines = []
    if est.train_examples is not None:
        held = f", {est.eval_examples} held out for evaluation" if est.eval_examples else ""
        lines.append(f"**{est.train_examples:,}** training examples{held}")
    if est.steps is not None:
        per = (f" ({est.steps_per_epoch:,} per epoch, {est.examples_per_step:,} examples per step)"
               if est.steps_per_epoch else "")
        lines.append(f"**{est.steps:,}** steps{per}")
    if est.tokens_per_step:
        lines.append(f"about **{est.tokens_per_step:,.0f}** tokens per step ({est.tokens_per_example:,.0f} per "
                     "training row on average, cut at cutoff_len)")
    if est.seconds is not None:
        lines.append(f"time: about **{format_duration(est.seconds)}** of training, plus loading — "
                     f"{est.basis}")
    head = "**Estimate before Start** (an estimate: the run shows its real pace once it trains)"
    out = head + "\n\n" + "\n".join(f"- {line}" for line in lines) if lines else head
    out += "".join(f"\n\nℹ️ {note}" for note in est.notes)
    out += "".join(f"\n\n🐢 **Slow here:** {w}" for w in est.warnings)
    return out


# ---- handlers (build binds the form's option names, its components or the app context) ------------------

def plan_from(names: list[str], name: str, raw: list[Any]) -> train_plan.TrainPlan:
    form, top = raw[:len(names)], raw[len(names):]
    return train_plan.plan_training(collect_values(names, form, *top), name)


def estimate(plan: train_plan.TrainPlan) -> train_plan.RunEstimate:
    """The plan's estimate, timed by the newest comparable run when there is one (else by a probe)."""
    pace = runs.comparable_pace({**plan.config, **plan.launch.to_dict()}, exclude=plan.name)
    return train_plan.estimate_run(plan, pace)


def on_preview(names: list[str], name, *raw):
    try:
        plan = plan_from(names, name, list(raw))
    except Exception as exc:
        return _message(exc, "Cannot preview:"), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    notes = "".join(f"\n\n⚠️ {w}" for w in plan.warnings)
    try:
        guess = estimate_markdown(estimate(plan))
    except Exception as exc:  # an estimate that fails must not hide the command
        guess = f"**Estimate before Start**\n\nℹ️ no estimate: {error_text(exc, mark=False)}"
    return ("This is what **Start** runs." + notes, preview_command(plan), plan.yaml, gr.update(open=True), guess)


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
        text = f"🚀 Started **{job.name}**: its progress shows below."
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


TICK_OUTPUTS = 8  # watch, status, progress, plot, log, runs table, runs version, the "Show run" picker


def on_tick(ctx: AppContext, watch, version):
    """The run shown (or the one to follow now: after a reload the running one, else the newest) → its status
    with what it is doing, progress bar, loss curve and log, and its name in "Show run"; the runs table as it
    moves; the runs version bumped when a run ended or an adapter appeared."""
    watch = watch or new_watch(None)
    snap = RUN_WATCHER.tick(watch)
    if snap is None:
        if watch.get("name"):  # the run shown was deleted
            return (new_watch(None), T("No training run yet.", "还没有训练运行。"),
                    progress_html(None, None, state="none"), None, "", gr.skip(), gr.skip(),
                    gr.update(choices=run_names(), value=None))
        return (gr.skip(),) * TICK_OUTPUTS
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
    # "Show run" names the run shown, also one followed on its own (after a reload, or the next in the queue).
    pick = gr.skip()
    if state.get("shown") != state["name"]:
        state["shown"] = state["name"]
        pick = gr.update(choices=run_names(), value=state["name"])
    return (state, status_markdown(snap.path, snap.status, snap.log_tail, snap.entries, snap.phase),
            progress_bar(snap), fig, snap.log_tail, table, bump, pick)


def _refresh_other_tabs(ctx: AppContext) -> None:
    for refresh in ctx.refreshers:
        try:
            refresh()
        except Exception:
            traceback.print_exc()


def on_pick(name):
    return new_watch(name, pinned=True) if name else gr.skip()


def on_table_select(evt: gr.SelectData):
    """A click on a row of the runs table shows that run."""
    row = evt.row_value or []
    name = str(row[0]) if row else ""
    if not name or runs.run_path_for(name) is None:
        return gr.skip(), gr.skip()
    return new_watch(name, pinned=True), gr.update(choices=run_names(), value=name)


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


# ---- filling the form: presets, a run's config, the browser's draft ---------------------------------------------

def _fixed_choices(component: Any) -> list[str] | None:
    """The values a dropdown accepts (None: any value, as a free-text or multi-select one)."""
    if not isinstance(component, gr.Dropdown) or component.allow_custom_value or component.multiselect:
        return None
    return [value for _, value in component.choices]


def form_updates(components: dict[str, Any], fields: dict[str, tuple[type, str]], values: dict[str, Any]) -> list:
    """Updates that show ``values`` in the form, the defaults where a value is absent; the dataset picker lists
    the datasets of the folder given."""
    updates = []
    for name, component in components.items():
        cls, _ = fields[name]
        value = component_value(component, name, values.get(name, _default(cls, name)))
        if name == "dataset":
            updates.append(gr.update(choices=dataset_names(_dataset_dir(values.get("dataset_dir"))), value=value))
        else:
            updates.append(gr.update(value=value))
    return updates


def top_updates(values: dict[str, Any]) -> list:
    return [
        gr.update(value=values["model_name_or_path"]) if values.get("model_name_or_path") else gr.skip(),
        gr.update(value=values.get("template") or "auto"),
        gr.update(value=values.get("infer_dtype") or "auto"),
        gr.update(value=str(values["quantization_bit"]) if values.get("quantization_bit") else NONE_CHOICE),
    ]


def on_load_preset(components: dict[str, Any], fields: dict[str, tuple[type, str]], name):
    try:
        if not name:
            raise WorkbenchError("pick a preset first")
        values, path = presets.load_preset(name)
    except Exception as exc:
        return [_message(exc, "Cannot load the preset:")] + [gr.skip()] * (len(components) + 4)
    ignored = [k for k in values if k in IGNORED_KEYS]
    note = f"✅ Loaded preset **{name}** (`{path}`)." + (
        f" Ignored: {', '.join(ignored)}." if ignored else "")
    return [note, *form_updates(components, fields, values), *top_updates(values)]


def on_load_run_config(components: dict[str, Any], fields: dict[str, tuple[type, str]], watch):
    """The shown run's config.yaml into the form (as H2O LLM Studio's clone), under a new run name."""
    skip = [gr.skip()] * (len(components) + 5)
    name = (watch or {}).get("name")
    path = runs.run_path_for(name)
    if path is None or not path.is_dir():
        return ["Pick a run under **Show run** (or click it in the table) first.", *skip]
    values = runs.read_config(path)
    if not values:
        return [f"❌ Run **{name}** has no readable `{CONFIG_FILE}` to load.", *skip]
    known = set(components) | set(TOP_KEYS) | set(NOT_CLONED)
    defaults = train_plan.option_defaults()
    left_out = [k for k in values if k not in known and k not in IGNORED_KEYS and values[k] != defaults.get(k)]
    values = {k: v for k, v in values.items() if k not in NOT_CLONED}
    note = (f"✅ Loaded the config of run **{name}** (`{path / CONFIG_FILE}`) into the form, with a new run name."
            + (f" Not in the form, so not loaded (set them in a preset or YAML): "
               f"{', '.join(f'{k}={values[k]}' for k in left_out)}." if left_out else ""))
    stage = str(values.get("stage") or "sft")
    method = str(values.get("finetuning_type") or "lora")
    return [note, *form_updates(components, fields, values), *top_updates(values),
            gr.update(value=default_run_name(stage, method))]


def on_reset(components: dict[str, Any], fields: dict[str, tuple[type, str]]):
    return ["The form is back at its defaults.", *form_updates(components, fields, {})]


def save_draft_js(names: list[str]) -> str:
    """Browser code that keeps the form (and the top bar) in local storage, once the page's draft is back in the
    form: a change made while the page loads (a blanked number, the top bar's model) must not overwrite it first."""
    keys = json.dumps([*names, *TOP_KEYS])
    return (f"(...values) => {{ if (window.wbTrainRestored) {{ try {{ localStorage.setItem({json.dumps(DRAFT_KEY)}, "
            f"JSON.stringify({{names: {keys}, values: values}})); }} catch (e) {{}} }} return []; }}")


READ_DRAFT_JS = (f"(x) => {{ let draft = null; try {{ draft = JSON.parse(localStorage.getItem({json.dumps(DRAFT_KEY)}) "
                 "|| 'null'); } catch (e) {} return [draft]; }")
RESTORED_JS = "() => { window.wbTrainRestored = true; return []; }"  # run once the draft is in the form


def draft_values(draft: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored draft ({"names": [...], "values": [...]}) → (form values, top-bar values); empty when unreadable."""
    if not isinstance(draft, dict) or not isinstance(draft.get("names"), list) or \
            not isinstance(draft.get("values"), list):
        return {}, {}
    pairs = dict(zip(draft["names"], draft["values"]))
    top = {k: pairs.pop(k) for k in TOP_KEYS if k in pairs}
    return pairs, top


def _restored_value(component: Any, value: Any) -> Any:
    """A draft's value if the component still takes it (an option's choices may have changed since)."""
    if isinstance(component, gr.Number):
        return value if value is None or isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING
    if isinstance(component, gr.Checkbox):
        return value if isinstance(value, bool) else MISSING
    choices = _fixed_choices(component)
    if choices is not None and value not in choices:
        return MISSING
    if isinstance(component, gr.Dropdown) and component.multiselect:
        return [str(v) for v in value] if isinstance(value, list) else MISSING
    return value if isinstance(value, str) else MISSING


def on_restore(ctx: AppContext, components: dict[str, Any], with_data_tab: bool, draft):
    """On page load: the form as this browser left it (options still offered), the top bar too while no model is
    loaded, and the Data tab's folder in step with the dataset folder. Numbers without a value are blanked here
    (see app.clear_unset_numbers)."""
    form, top = draft_values(draft)
    updates = []
    for name, component in components.items():
        value = _restored_value(component, form[name]) if name in form else MISSING
        if name == "dataset" and value is not MISSING:
            updates.append(gr.update(choices=dataset_names(_dataset_dir(form.get("dataset_dir"))), value=value))
        elif value is not MISSING:
            updates.append(gr.update(value=value))
        elif isinstance(component, gr.Number) and component.value is None:
            updates.append(gr.update(value=None))  # drawn as 0 otherwise
        else:
            updates.append(gr.skip())
    if top and ctx.manager.current() is None:
        bar = dict(zip(TOP_KEYS, (ctx.model, ctx.template, ctx.dtype, ctx.quantization)))
        tops = [gr.skip() if not top.get(k) or (value := _restored_value(bar[k], top[k])) is MISSING
                else gr.update(value=value) for k in TOP_KEYS]
    else:
        tops = [gr.skip()] * len(TOP_KEYS)
    folder = form_value(form.get("dataset_dir"))
    data_tab = [gr.skip(), gr.skip()]
    if isinstance(folder, str):
        data_tab = [gr.update(value=folder), gr.update(choices=dataset_names(_dataset_dir(folder)), value=None)]
    note = ("↩️ The form is as you left it in this browser (**Reset form** sets the defaults)." if form
            else gr.skip())
    return [note, *updates, *tops, *(data_tab if with_data_tab else [])]


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


def on_push_folder(folder):
    """The Train tab's dataset folder → the Data tab's folder and its dataset list."""
    where = _dataset_dir(folder)
    return gr.update(value=str(where)), gr.update(choices=dataset_names(where), value=None)


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
            choices=dataset_names(default_dataset_dir()), value=[], multiselect=True,
            allow_custom_value=True, label=T("Datasets", "数据集"), elem_id="opt-dataset",
            info=T("From dataset_info.json in the dataset folder (register more in the Data tab); several are "
                   "combined", "来自数据集目录中的 dataset_info.json（可在数据标签页注册）；可多选合并"))}
    if name == "deepspeed":
        return {name: deepspeed_dropdown(cls)}
    return option_components(cls, only=[name])


def _follow_dataset_folder(ctx: AppContext, components: dict[str, Any]) -> None:
    """The dataset picker lists the datasets of the folder in dataset_dir, and one saved in the Data tab at once;
    the Data tab's folder and this one move together."""
    folder, picker = components["dataset_dir"], components["dataset"]
    folder.change(on_dataset_dir, inputs=[folder, picker], outputs=[picker])
    datasets_version = ctx.version(DATASETS_VERSION)
    data_tab_dir = ctx.extras.get(DATA_FOLDER)
    if data_tab_dir is None:
        datasets_version.change(on_dataset_dir, inputs=[folder, picker], outputs=[picker])
        return
    # offered from the folder the Data tab saved it into
    datasets_version.change(on_dataset_saved, inputs=[data_tab_dir, picker], outputs=[folder, picker])
    data_tab_dir.submit(on_dataset_saved, inputs=[data_tab_dir, picker], outputs=[folder, picker])
    data_tab_datasets = ctx.extras.get(DATA_FOLDER_DATASETS)
    if data_tab_datasets is not None:
        for event in (folder.submit, folder.blur):
            event(on_push_folder, inputs=[folder], outputs=[data_tab_dir, data_tab_datasets], queue=False,
                  show_progress="hidden")


def _helper_button(text: Any, elem_id: str, min_width: int = 120, **kw) -> gr.Button:
    """A secondary button of normal height (not stretched to the height of the boxes beside it)."""
    return gr.Button(text, size="md", min_width=min_width, scale=0, elem_id=elem_id, **kw)


def build(ctx: AppContext) -> None:
    runs_version = ctx.version(RUNS_VERSION)
    fields = form_fields()
    watch = gr.State(new_watch(None))
    draft = gr.JSON(visible=False)  # the draft read from local storage, on its way to on_restore

    gr.Markdown(T(
        "Fill in the form (the model, template, precision and quantization come from the top bar), check the exact "
        "command and the estimate with **Preview**, then **Start**. The form is kept in this browser. Runs are "
        "processes of their own: they go on if you close or reload this page, and one training run uses the device "
        "at a time — further starts wait in a queue.",
        "填写表单（模型、模板、精度和量化来自顶部栏），用**预览**查看将要运行的确切命令和估算，然后点击**开始**。"
        "表单会保存在本浏览器中。训练在独立进程中运行：关闭或刷新页面不会中断；同一时间只有一个训练任务占用设备，其余排队等待。"))
    with gr.Row(equal_height=False, elem_id="wb-train-top"):
        run_name = gr.Textbox(value=default_run_name, label=T("Run name", "运行名称"), scale=2,
                              info=T("Also the output directory under the runs directory",
                                     "也是运行目录下的输出目录名"), elem_id="wb-train-run-name")
        with gr.Column(scale=2, min_width=240):
            preset = gr.Dropdown(choices=list(presets.list_presets()), value=None, label=T("Preset", "预设"),
                                 elem_id="wb-train-preset")
            with gr.Row():
                load_preset = _helper_button(T("Load preset", "加载预设"), "wb-train-preset-load")
                reset_btn = _helper_button(T("Reset form", "重置表单"), "wb-train-reset")
        with gr.Column(scale=2, min_width=240):
            preset_name = gr.Textbox(label=T("Save as preset", "另存为预设"), elem_id="wb-train-preset-name")
            save_preset = _helper_button(T("Save preset", "保存预设"), "wb-train-preset-save")

    components = form_components(fields)
    names = list(components)
    form_inputs = [components[n] for n in names]
    top_inputs = [ctx.model, ctx.template, ctx.dtype, ctx.quantization]
    ctx.restored_on_load.extend(c for c in form_inputs if isinstance(c, gr.Number))

    estimate_md = gr.Markdown(T("**Estimate before Start:** press **Preview** to count the examples, steps and "
                                "tokens and estimate the time.", "**开始前的估算：**点击**预览**以统计样本数、步数和"
                                "词元数并估算时间。"), elem_id="wb-train-estimate")
    with gr.Row():
        preview_btn = gr.Button(T("Preview command and estimate", "预览命令与估算"), elem_id="wb-train-preview")
        start_btn = gr.Button(T("Start", "开始"), variant="primary", elem_id="wb-train-start")
        abort_btn = gr.Button(T("Abort", "中止"), variant="stop", elem_id="wb-train-abort")
    message = gr.Markdown(elem_id="wb-train-message")

    # The live run, right under the buttons: where one looks after pressing Start.
    with gr.Column(elem_id="wb-train-live"):
        with gr.Row(equal_height=False):
            run_pick = gr.Dropdown(choices=run_names(), value=None, label=T("Show run", "显示运行"), scale=3,
                                   elem_id="wb-train-run-pick")
            refresh_btn = _helper_button(T("Refresh", "刷新"), "wb-train-refresh")
        status_md = gr.Markdown(T("No training run yet.", "还没有训练运行。"), elem_id="wb-train-status")
        progress = gr.HTML(progress_html(None, None, state="none"), elem_id="wb-train-progress")
        with gr.Row():
            plot = gr.Plot(label=T("Loss", "损失"), elem_id="wb-train-plot", scale=3)
            log_box = gr.Textbox(label=T("log.txt (last lines)", "log.txt（最后几行）"), lines=14, max_lines=14,
                                 interactive=False, autoscroll=True, elem_id="wb-train-log", scale=2)
    with gr.Accordion(T("Command and config that Start runs", "开始时运行的命令与配置"), open=False,
                      elem_id="wb-train-preview-box") as preview_box:
        command_box = gr.Textbox(label=T("Command", "命令"), interactive=False, buttons=["copy"],
                                 elem_id="wb-train-command")
        yaml_box = gr.Code(label=CONFIG_FILE, language="yaml", interactive=False, elem_id="wb-train-yaml")

    gr.Markdown(T("### Runs\nClick a run to show it above; **Load its config into the form** starts a new run "
                  "from it.", "### 全部运行\n点击某个运行即可在上方显示；**将其配置载入表单**可基于它开始新的运行。"))
    runs_table = gr.Dataframe(value=runs_frame, headers=RUN_COLUMNS, interactive=False, wrap=True, max_height=360,
                              elem_id="wb-train-runs")
    with gr.Row(equal_height=False):
        compare = gr.Dropdown(choices=run_names(), value=[], multiselect=True, scale=4,
                              label=T("Compare runs (loss curves and config differences)", "对比运行（损失曲线与配置差异）"),
                              elem_id="wb-train-compare")
        clone_btn = _helper_button(T("Load its config into the form", "将其配置载入表单"), "wb-train-clone",
                                   min_width=260)
        delete_btn = _helper_button(T("Delete run…", "删除运行…"), "wb-train-delete", variant="stop")
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
                      outputs=[message, command_box, yaml_box, preview_box, estimate_md], preprocess=False)
    tick = bind(on_tick, ctx)
    tick_outputs = [watch, status_md, progress, plot, log_box, runs_table, runs_version, run_pick]
    then_tick = dict(fn=tick, inputs=[watch, runs_version], outputs=tick_outputs, show_progress="hidden", queue=False)
    start_btn.click(bind(on_start, ctx, names), inputs=[run_name, *form_inputs, *top_inputs],
                    outputs=[message, watch, command_box, yaml_box, run_name, run_pick], preprocess=False,
                    concurrency_limit=1).then(**then_tick)
    abort_btn.click(on_abort, inputs=[watch], outputs=[message])
    timer.tick(**then_tick)  # queue=False: a refresh must not wait behind a Start in the queue (nor show its timer)
    run_pick.input(on_pick, inputs=[run_pick], outputs=[watch]).then(**then_tick)
    runs_table.select(on_table_select, outputs=[watch, run_pick]).then(**then_tick)
    refresh_btn.click(on_refresh, outputs=[runs_table, run_pick, compare])
    compare.change(on_compare, inputs=[compare], outputs=[overlay, diff])
    delete_btn.click(on_delete, inputs=[watch], outputs=[confirm_row, confirm_md, message])
    confirm_btn.click(on_confirm, inputs=[watch, runs_version],
                      outputs=[confirm_row, message, watch, runs_table, run_pick, compare, runs_version])
    cancel_btn.click(on_cancel_delete, outputs=[confirm_row, confirm_md])
    load_preset.click(bind(on_load_preset, components, fields), inputs=[preset],
                      outputs=[message, *form_inputs, *top_inputs])
    clone_btn.click(bind(on_load_run_config, components, fields), inputs=[watch],
                    outputs=[message, *form_inputs, *top_inputs, run_name])
    reset_btn.click(bind(on_reset, components, fields), outputs=[message, *form_inputs])
    save_preset.click(bind(on_save_preset, names), inputs=[preset_name, *form_inputs, *top_inputs],
                      outputs=[message, preset], preprocess=False)

    # The form is kept in this browser: every change of it (typed, or filled by a preset or a run's config) is
    # stored by the browser itself; a page load reads it back.
    gr.on([c.change for c in (*form_inputs, *top_inputs)], None, inputs=[*form_inputs, *top_inputs], outputs=[],
          js=save_draft_js(names), trigger_mode="always_last", queue=False, show_progress="hidden")
    data_tab = [ctx.extras[k] for k in (DATA_FOLDER, DATA_FOLDER_DATASETS) if k in ctx.extras]
    data_tab = data_tab if len(data_tab) == 2 else []  # built without the Data tab (a test of this tab alone)
    # Every page load sees presets and runs created since the app started (by the CLI too), puts the draft back
    # (chained to the load: a gr.on without triggers would also run on every change of the draft), and shows the
    # running (else the newest) run at once.
    loaded = gr.on(None, on_page_load, inputs=None, outputs=[preset, run_pick, compare], queue=False,
                   show_progress="hidden")
    loaded.then(bind(on_restore, ctx, components, bool(data_tab)), inputs=[draft], js=READ_DRAFT_JS,
                outputs=[message, *form_inputs, *top_inputs, *data_tab], queue=False, show_progress="hidden").then(
        None, js=RESTORED_JS, queue=False, show_progress="hidden")
    loaded.then(**then_tick)
    if "dataset_dir" in components:
        _follow_dataset_folder(ctx, components)
