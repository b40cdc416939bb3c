"""Export tab: merge adapter(s) into a standalone model (safetensors or GGUF), write an adapter alone as a
GGUF LoRA adapter, or combine several adapters into one.

The work runs as a Job (``python -m workbench export|merge-adapters``, see :mod:`workbench.export`);
this module only builds the form, starts the job and shows its progress. A finished merged model is
added to the top bar's model picker, a combined adapter to the adapter pickers (a GGUF file is for
llama.cpp, Ollama and LM Studio, and is not offered there).
"""

from __future__ import annotations

import shlex
from typing import Any

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.export import (DEFAULT_SHARD_SIZE, DENSITY_METHODS, ExportArgs, MergeAdaptersArgs,
                                     OutputOptions)
from workbench.export.launch import command_argv, start_export_job
from workbench.export.merge import EXPORT, MERGE
from workbench.jobs.runs import list_adapters
from workbench.ui.binding import bind
from workbench.ui.context import (
    ADAPTERS_VERSION,
    RUNS_VERSION,
    AppContext,
    adapter_choices,
    adapter_map,
    adapter_picker_update,
    error_text,
    model_choices,
)
from workbench.ui.forms import collect, option_components
from workbench.ui.i18n import T, message, say
from workbench.ui.runwatch import RunWatcher, Snapshot, abort_watched

EXPORT_FIELDS = ("format", "quant", "adapter_only", "dtype", "shard_size")
GGUF_ONLY = ("quant", "adapter_only")  # shown when format is gguf; shard_size only for safetensors
MERGE_FIELDS = ("method", "weights", "density", "svd_rank")
OUTPUT_FIELDS = ("out", "overwrite", "check_base")
POLL_SECONDS = 1.0
# Only the job started on this page (its timer runs from Start to the job's end); no re-attach after a reload.
RUN_WATCHER = RunWatcher("export", log_lines=20, reattach=False)

STARTED = message("Export job started:", "导出任务已启动：")
QUEUED = message("Queued behind the running job:", "正在排队，等待当前任务结束：")
EXPORTING = message("Exporting…", "正在导出……")
FINISHED = message("Finished.", "已完成。")
FAILED = message("Failed:", "失败：")
MERGED = message("Merged model saved to the folder below. It is now in the model picker at the top: choose it and "
                 "press Load model to chat with it.",
                 "合并后的模型已保存到下面的目录，并已加入上方的模型选择：选中它并点击“加载模型”即可对话。")
COMBINED = message("Combined adapter saved to the folder below. It is now in the adapter pickers (Chat, Evaluate).",
                   "合并后的适配器已保存到下面的目录，并已加入适配器选择（对话、评测）。")
GGUF_LORA = message("GGUF LoRA adapter saved. Use it with a GGUF of its base model (export the base with format gguf "
                    "and no adapter), in llama.cpp or in an Ollama Modelfile:",
                    "GGUF LoRA 适配器已保存。请与其基座模型的 GGUF 一起使用（以 gguf 格式、不选适配器导出基座模型），"
                    "可用于 llama.cpp 或 Ollama 的 Modelfile：")
GGUF_MODEL = message("GGUF model saved. Run it with llama.cpp, Ollama (FROM in a Modelfile) or LM Studio (import the "
                     "file):", "GGUF 模型已保存。可用 llama.cpp、Ollama（在 Modelfile 中写 FROM）或 LM Studio（导入文件）运行：")


def _base_of(path: str) -> str | None:
    return next((base for _, where, base in list_adapters() if where == path and base), None)


def _request(mode: str, model: str, adapters: list[str] | None, values: dict[str, Any]):
    """Form values → (command, model, adapters, options); option errors name the option."""
    command = MERGE if mode == MERGE else EXPORT
    cls = MergeAdaptersArgs if command == MERGE else ExportArgs
    fields = OUTPUT_FIELDS + (MERGE_FIELDS if command == MERGE else EXPORT_FIELDS)
    picked = {k: v for k, v in values.items() if k in fields}
    if command == MERGE and picked.get("method") not in DENSITY_METHODS:
        picked["density"] = None  # the box is hidden for methods that do not prune
    if command == MERGE and picked.get("method") != "svd":
        picked["svd_rank"] = None
    if command == EXPORT:  # options hidden for the chosen format keep their defaults
        if picked.get("format") == "gguf":
            picked["shard_size"] = DEFAULT_SHARD_SIZE
            if picked.get("adapter_only"):
                picked["dtype"] = "auto"
        else:
            picked["quant"], picked["adapter_only"] = "f16", False
    opts = collect(cls, picked)
    model = (model or "").strip()
    if not model:
        raise WorkbenchError("choose the base model")
    return command, model, adapter_map(adapters), opts


def _progress_text(snap: Snapshot) -> tuple[str, bool, bool]:
    """(markdown, ended, finished) for a tick of the job."""
    status, state = snap.status, snap.state
    last = snap.entries[-1] if snap.entries else None
    if state == "queued":
        where = status.get("queue_position")
        return say(f"⏳ {QUEUED} `{snap.watch.get('name')}`{f' (#{where})' if where else ''}"), False, False
    if state == "running":
        if last:
            return (say(f"⏳ {EXPORTING} {last['step']}/{last['total_steps']}: {last['message']} "
                        f"({last.get('elapsed', 0):.0f}s)"), False, False)
        return say(f"⏳ {EXPORTING}"), False, False
    if state == "finished":
        return say(f"✅ {FINISHED}"), True, True
    error = status.get("error") or "see the log"
    lead = FAILED if state == "failed" else f"{str(state).capitalize()}:"
    return say(f"❌ {lead} {error}"), True, False


def _finished_text(watch: dict[str, Any]) -> str:
    out = watch["out"]
    if watch.get("kind") in ("gguf", "gguf_lora"):
        return finished_text(watch["kind"], out)
    if watch["command"] == EXPORT:
        return say(f"✅ {MERGED}\n\n`{out}`")
    return say(f"✅ {COMBINED}\n\n`{out}`")


def finished_text(kind: str, out: str) -> str:
    """What a finished GGUF export says (it is not added to the model pickers: Workbench loads safetensors)."""
    if kind == "gguf_lora":
        return say(f"✅ {GGUF_LORA}\n\n`{out}` · `llama-cli -m BASE.gguf --lora {out}` · `ADAPTER {out}`")
    return say(f"✅ {GGUF_MODEL}\n\n`{out}` · `llama-cli -m {out}` · `FROM {out}`")


# ---- handlers (build binds the names of the option inputs) ----------------------------------------------

def unpack(names: list[str], args) -> tuple[str, str, list[str], dict[str, Any]]:
    mode_v, model_v, adapters_v, *rest = args
    return mode_v, model_v, adapters_v, dict(zip(names, rest))


def on_mode(mode_v: str, method_v: str, format_v: str):
    merging = mode_v == MERGE
    gguf = not merging and format_v == "gguf"
    return (gr.update(visible=merging), gr.update(visible=not merging),
            gr.update(visible=merging and method_v in DENSITY_METHODS),
            gr.update(visible=merging and method_v == "svd"),
            *(gr.update(visible=gguf) for _ in GGUF_ONLY), gr.update(visible=not gguf))


def on_adapters(selected, model_v):
    """Follow the base model the picked run was trained on."""
    for path in selected or []:
        base = _base_of(str(path))
        if base:
            return gr.update(value=base)
    return gr.update(value=model_v)


def on_preview(names: list[str], *args):
    """The command for the form; a ❌ left by a Start that failed goes once the form makes a valid command."""
    *args, status_v = args
    mode_v, model_v, adapters_v, values = unpack(names, args)
    try:
        cmd, model_name, adapter_dirs, opts = _request(mode_v, model_v, adapters_v, values)
        command = shlex.join(["python", *command_argv(cmd, model_name, adapter_dirs, opts)[1:]])
    except WorkbenchError as exc:
        return f"# {exc}", gr.update()
    return command, "" if str(status_v or "").startswith("❌") else gr.update()


def on_start(names: list[str], *args):
    mode_v, model_v, adapters_v, values = unpack(names, args)
    try:
        cmd, model_name, adapter_dirs, opts = _request(mode_v, model_v, adapters_v, values)
        job, out = start_export_job(cmd, model_name, adapter_dirs, opts)
    except Exception as exc:  # shown in the tab; nothing was started
        return None, error_text(exc), "", gr.update(active=False)
    kind = ("gguf_lora" if opts.adapter_only else "gguf") if cmd == EXPORT and opts.is_gguf else cmd
    return ({"name": job.name, "out": str(out), "command": cmd, "kind": kind},
            say(f"⏳ {STARTED} `{job.name}` → `{out}`"), job.tail_log(20), gr.update(active=True))


def on_tick(watch, version_v):
    """Follow the job until it ends (then the timer stops); a finished model or adapter joins the pickers."""
    keep = (gr.update(), gr.update(), version_v)
    try:
        snap = RUN_WATCHER.tick(watch) if watch else None
    except WorkbenchError as exc:
        return (error_text(exc), gr.update(), gr.update(active=False), *keep)
    if snap is None:
        return ("", gr.update(), gr.update(active=False), *keep)
    text, ended, finished = _progress_text(snap)
    if not ended:
        return (text, snap.log_tail, gr.update(active=True), *keep)
    if not finished:
        return (text, snap.log_tail, gr.update(active=False), *keep)
    return (_finished_text(watch), snap.log_tail, gr.update(active=False), gr.update(choices=model_choices()),
            gr.update(choices=adapter_choices()), version_v + 1)


def on_abort(watch):
    return say(abort_watched(watch, f" (nothing was written to {watch['out']})" if watch else ""))


def on_refresh():
    return gr.update(choices=adapter_choices()), gr.update(choices=model_choices())


# ---- the tab ----------------------------------------------------------------------------------------

def build(ctx: AppContext) -> None:

    version = ctx.version(ADAPTERS_VERSION)
    runs_version = ctx.version(RUNS_VERSION)  # bumped when a training run finishes: its adapter joins the picker
    job_state = gr.State(None)  # the job's watch (runwatch): {"name", "out": output dir, "command", "kind"}

    gr.Markdown(T(
        "**Merge into a model** writes a standalone model (safetensors shards, config, tokenizer and chat template) "
        "that loads without PEFT; it then appears in the model picker above. With format **gguf** it writes one "
        ".gguf file for llama.cpp, Ollama and LM Studio instead (Llama, Mistral and Qwen2 models; no adapter: the "
        "base model itself), or with *adapter only* the adapter alone as a GGUF LoRA adapter. **Combine adapters** "
        "merges several LoRA adapters into one new adapter (PEFT format) that appears in the adapter pickers. All run "
        "as a job.",
        "**合并到模型**：生成独立模型（safetensors 分片、配置、分词器和对话模板），无需 PEFT 即可加载，完成后出现在上方的模型选择中。"
        "格式选 **gguf** 时改为生成一个 .gguf 文件，供 llama.cpp、Ollama 和 LM Studio 使用（Llama、Mistral 和 Qwen2 模型；"
        "不选适配器则转换基座模型本身）；勾选“仅导出适配器”时只把适配器写成 GGUF LoRA 适配器。"
        "**合并适配器**：把多个 LoRA 适配器合并为一个新适配器（PEFT 格式），完成后出现在适配器选择中。均作为任务运行。"))
    with gr.Column(elem_id="wb-export"):
        mode = gr.Radio(choices=[(T("Merge adapter(s) into the model", "将适配器合并到模型"), EXPORT),
                                 (T("Combine adapters into one adapter", "合并多个适配器"), MERGE)],
                        value=EXPORT, label=T("What to do", "操作"), elem_id="wb-export-mode")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(choices=model_choices(), value="smollm2-135m-instruct", allow_custom_value=True,
                                label=T("Base model", "基座模型"), scale=2, elem_id="wb-export-model")
            adapters = gr.Dropdown(choices=adapter_choices(), value=[], multiselect=True, allow_custom_value=True,
                                   label=T("Adapters (finished runs, or type a directory)", "适配器（已完成的训练，或输入目录）"),
                                   scale=3, elem_id="wb-export-adapters")
            refresh = gr.Button(T("Refresh", "刷新"), scale=0, min_width=90, elem_id="wb-export-refresh")
        with gr.Group(visible=False) as merge_group:
            with gr.Row():
                merge_inputs = option_components(MergeAdaptersArgs, only=MERGE_FIELDS)
        merge_inputs["density"].visible = False
        merge_inputs["svd_rank"].visible = False
        with gr.Group() as export_group:
            with gr.Row():
                export_inputs = option_components(ExportArgs, only=EXPORT_FIELDS)
        for name in GGUF_ONLY:
            export_inputs[name].visible = False
        with gr.Row():
            output_inputs = option_components(OutputOptions, only=OUTPUT_FIELDS[:2])
        with gr.Accordion(T("Advanced", "高级"), open=False):
            output_inputs.update(option_components(OutputOptions, only=OUTPUT_FIELDS[2:]))
        # Wrapped to stay readable; lines=1: a wrapped box otherwise grows to about 600 px.
        command = gr.Code(label=T("Command", "命令"), language="shell", interactive=False, wrap_lines=True, lines=1,
                          max_lines=10, elem_id="wb-export-command")
        with gr.Row():
            start = gr.Button(T("Start", "开始"), variant="primary", elem_id="wb-export-start")
            abort = gr.Button(T("Abort", "中止"), variant="stop", elem_id="wb-export-abort")
        status = gr.Markdown(elem_id="wb-export-status")
        log = gr.Textbox(label=T("Log", "日志"), lines=8, max_lines=16, interactive=False, autoscroll=True,
                         elem_id="wb-export-log")
    timer = gr.Timer(POLL_SECONDS, active=False)

    value_inputs = {**merge_inputs, **export_inputs, **output_inputs}
    names = list(value_inputs)
    form = [mode, model, adapters, *value_inputs.values()]
    preview = bind(on_preview, names)
    method, fmt = merge_inputs["method"], export_inputs["format"]
    shown = [merge_group, export_group, merge_inputs["density"], merge_inputs["svd_rank"],
             *(export_inputs[n] for n in GGUF_ONLY), export_inputs["shard_size"]]
    for trigger in (mode, method, fmt):
        trigger.change(on_mode, inputs=[mode, method, fmt], outputs=shown)
    adapters.input(on_adapters, inputs=[adapters, model], outputs=model)
    gr.on([c.change for c in form], preview, inputs=[*form, status], outputs=[command, status])
    # Then the command again (None for the status: what Start said stays).
    start.click(bind(on_start, names), inputs=form, outputs=[job_state, status, log, timer]).then(
        preview, inputs=[*form, gr.State(None)], outputs=[command, status])
    timer.tick(on_tick, inputs=[job_state, version],
               outputs=[status, log, timer, ctx.model, adapters, version])
    abort.click(on_abort, inputs=job_state, outputs=status)
    refresh.click(on_refresh, outputs=[adapters, model])
    runs_version.change(adapter_picker_update, outputs=adapters)
