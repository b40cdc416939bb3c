"""Data tab: open a registered dataset or upload a file, map its columns, preview it through the chat
template (trained tokens highlighted, token-length histogram), and register it in dataset_info.json.

All work is done by :mod:`workbench.data.inspect`; this module only wires components to it.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from workbench.config.base import WorkbenchError
from workbench.data import inspect as di
from workbench.data.converters import ConvertOptions, convert_and_register
from workbench.data.registry import dataset_names, info_path
from workbench.data.spec import DEFAULT_TAGS, FORMATS, TAG_KEYS
from workbench.data.stats import histogram_figure
from workbench.data.templates import resolve_template
from workbench.paths import default_dataset_dir
from workbench.ui.context import DATA_FOLDER, DATA_FOLDER_DATASETS, DATASETS_VERSION, AppContext, error_text
from workbench.ui.i18n import T, message, say

NONE = "(none)"
UPLOAD_TYPES = [".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt"]
ALPACA_ONLY = {"prompt", "query", "response", "history"}
CONVERSATION_ONLY = {"messages"}
COLUMN_LABELS = {
    "prompt": ("prompt (instruction)", "提示（指令）"), "query": ("query (input)", "输入"),
    "response": ("response (output)", "回答（输出）"), "history": ("history", "历史对话"),
    "messages": ("messages", "消息列表"), "system": ("system", "系统提示词"), "tools": ("tools", "工具"),
    "chosen": ("chosen", "优选回答"), "rejected": ("rejected", "劣选回答"), "kto_tag": ("kto_tag", "KTO 标签"),
}
MAX_PREVIEW_ROWS = 2000
# What opening a file updates (build's source_outputs): the open source, status, format, ranking, one picker per
# mappable column, one box per role tag, the tags panel, the first rows, the save name, and the preview's state,
# rendered example, stats and histogram.
SOURCE_OUTPUTS = 11 + len(di.MAPPABLE_COLUMNS) + len(TAG_KEYS)
# The first-rows table before a file is open (real headers, not Gradio's 1 2 3).
EMPTY_ROWS = pd.DataFrame(columns=["instruction", "input", "output"])

OPENED = message("Opened. Check the column mapping, then press Preview:",
                 "已打开。请检查列映射，然后点击“预览”：")
PREVIEWED = message("Preview ready:", "预览完成：")
SAVED = message("Saved and listed wherever datasets are picked:", "已保存，可在所有选择数据集的地方选用：")
SAVED_BAK = message("Saved and listed wherever datasets are picked (the previous dataset_info.json is kept as "
                    "dataset_info.json.bak):",
                    "已保存，可在所有选择数据集的地方选用（之前的 dataset_info.json 保留为 dataset_info.json.bak）：")
CONVERTED = message("Converted and registered:", "已转换并注册：")
NO_DATASETS = message("No dataset_info.json with datasets in this folder yet; upload a file to start one:",
                      "此目录中还没有登记数据集的 dataset_info.json；上传一个文件即可开始：")


def _cell(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(source: di.Source, n: int = 10) -> pd.DataFrame:
    return pd.DataFrame([[_cell(r.get(c)) for c in source.columns] for r in source.rows[:n]], columns=source.columns)


def _column_updates(source: di.Source | None, formatting: str) -> list:
    if not isinstance(source, di.Source):
        return [gr.update(choices=[NONE], value=NONE) for _ in di.MAPPABLE_COLUMNS]
    used = di.effective_columns(formatting, source.columns_map, source.columns)
    return [gr.update(choices=[NONE, *source.columns], value=used[k] or NONE, visible=_visible(k, formatting))
            for k in di.MAPPABLE_COLUMNS]


def _visible(key: str, formatting: str) -> bool:
    return key not in (CONVERSATION_ONLY if formatting == "alpaca" else ALPACA_ONLY)


def _tag_updates(source: di.Source | None) -> list:
    return [gr.update(value=(source.tags.get(k, "") if source else "")) for k in TAG_KEYS]


def _summary(source: di.Source, where: str) -> str:
    kind = f"{source.formatting}" + (" · ranking" if source.ranking else "")
    lines = [f"{OPENED} **{where}** · `{', '.join(source.columns) or '-'}` · **{kind}**"]
    if source.formatting != "alpaca" and source.tags:
        lines.append("Role tags: " + ", ".join(f"`{k}` = `{v}`" for k, v in source.tags.items()))
    lines += [f"⚠️ {note}" for note in source.notes]
    return say("\n\n".join(lines))


def _mapping(formatting, ranking, columns: list, tags: list) -> tuple[dict, dict]:
    cols = {k: (v if v and v != NONE else None) for k, v in zip(di.MAPPABLE_COLUMNS, columns)}
    cols = {k: v for k, v in cols.items() if _visible(k, formatting)}
    tag_map = {k: (v.strip() or None) if isinstance(v, str) else None for k, v in zip(TAG_KEYS, tags)}
    return cols, tag_map


def _split_mapping(rest: tuple) -> tuple[list, list, tuple]:
    """An event's trailing values → (the column pickers', the role tag boxes', what follows them)."""
    n_cols, n_tags = len(di.MAPPABLE_COLUMNS), len(TAG_KEYS)
    return list(rest[:n_cols]), list(rest[n_cols:n_cols + n_tags]), rest[n_cols + n_tags:]


def build(ctx: AppContext) -> None:
    version = ctx.version(DATASETS_VERSION)
    source_state = gr.State(None)  # the di.Source being edited, or why the last open failed (a str)
    preview_state = gr.State(None)  # the last di.Preview

    gr.Markdown(T(
        "Pick a registered dataset or upload a file (json, jsonl, csv, parquet, arrow, txt). The format is detected "
        "and the columns are mapped for you; check the mapping, preview what the model will be trained on, then "
        "save it into `dataset_info.json`.",
        "选择已注册的数据集或上传文件（json、jsonl、csv、parquet、arrow、txt）。系统会自动识别格式并映射列；"
        "检查映射、预览模型实际训练的内容，然后保存到 `dataset_info.json`。"))
    folder_now = default_dataset_dir()  # made on first use, with the demo sets registered
    with gr.Row(equal_height=True):
        data_dir = gr.Textbox(
            value=str(folder_now), label=T("Dataset folder", "数据集目录"), scale=3, elem_id="wb-data-dir",
            info=T("dataset_info.json lives here, and Save copies an uploaded file here. By default this is data/ in "
                   "the Workbench home ($WORKBENCH_HOME, or $WORKBENCH_DATA), which starts with the demo sets; the "
                   "project's own data/ is never written to.",
                   "dataset_info.json 存放在这里，保存时上传的文件也会复制到这里。默认是 Workbench 主目录（$WORKBENCH_HOME，"
                   "或 $WORKBENCH_DATA）下的 data/，初始包含示例数据集；项目自带的 data/ 不会被写入。"))
        dataset = gr.Dropdown(choices=dataset_names(folder_now), value=None,
                              label=T("Registered dataset", "已注册的数据集"), scale=3, elem_id="wb-data-dataset")
        # The Train tab keeps its dataset folder in step with these (after a reload too).
        ctx.extras[DATA_FOLDER], ctx.extras[DATA_FOLDER_DATASETS] = data_dir, dataset
        refresh = gr.Button(T("Refresh", "刷新"), scale=1, elem_id="wb-data-refresh")
    upload = gr.File(label=T("…or upload a data file", "……或上传数据文件"), file_types=UPLOAD_TYPES,
                     type="filepath", elem_id="wb-data-upload")
    status = gr.Markdown(elem_id="wb-data-status")

    with gr.Accordion(T("Format and column mapping", "格式与列映射"), open=True):
        with gr.Row():
            formatting = gr.Dropdown(choices=list(FORMATS), value="alpaca", label=T("Format", "格式"),
                                     elem_id="wb-data-format")
            ranking = gr.Checkbox(value=False, label=T("Preference pairs (ranking: chosen / rejected)",
                                                       "偏好数据（ranking：优选/劣选）"), elem_id="wb-data-ranking")
        with gr.Row():
            column_dds = [
                gr.Dropdown(choices=[NONE], value=NONE, label=T(*COLUMN_LABELS[k]), elem_id=f"wb-data-col-{k}",
                            visible=_visible(k, "alpaca"), min_width=140)
                for k in di.MAPPABLE_COLUMNS
            ]
        with gr.Accordion(T("Role tags (sharegpt)", "角色标签（sharegpt）"), open=False) as tags_panel:
            with gr.Row():
                tag_boxes = [gr.Textbox(value="", label=k, placeholder=DEFAULT_TAGS["sharegpt"][k],
                                        elem_id=f"wb-data-tag-{k}", min_width=120) for k in TAG_KEYS]

    with gr.Row(equal_height=True):
        cutoff = gr.Number(value=1024, precision=0, minimum=8, label=T("cutoff_len (tokens)", "截断长度（token）"),
                           elem_id="wb-data-cutoff")
        train_on_prompt = gr.Checkbox(value=False, label=T("Train on prompt", "训练提示词"))
        mask_history = gr.Checkbox(value=False, label=T("Train only the last turn", "仅训练最后一轮"))
        preview_btn = gr.Button(T("Preview", "预览"), variant="primary", elem_id="wb-data-preview")

    rows_table = gr.Dataframe(value=EMPTY_ROWS, label=T("First rows", "前几行"), interactive=False, wrap=True,
                              max_height=320, elem_id="wb-data-rows")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            example_no = gr.Number(value=1, precision=0, minimum=1, label=T("Example", "样例序号"),
                                   elem_id="wb-data-example")
            rendered = gr.HighlightedText(
                label=T("Rendered with the chat template — highlighted tokens are trained",
                        "按对话模板渲染——高亮的 token 参与训练"),
                color_map={"trained": "#22c55e"}, show_legend=True, combine_adjacent=True,
                elem_id="wb-data-rendered")
        with gr.Column(scale=2):
            stats_md = gr.Markdown(elem_id="wb-data-stats")
            histogram = gr.Plot(label=T("Token lengths", "Token 长度分布"), elem_id="wb-data-hist")

    with gr.Row(equal_height=True):
        save_name = gr.Textbox(label=T("Save as (dataset name)", "保存为（数据集名称）"), scale=3,
                               elem_id="wb-data-name")
        save_btn = gr.Button(T("Save to dataset_info.json", "保存到 dataset_info.json"), scale=1,
                             elem_id="wb-data-save")
    save_status = gr.Markdown(elem_id="wb-data-save-status")

    with gr.Accordion(T("Convert seed-task data (summarization, QA, translation)",
                        "转换种子任务数据（摘要、问答、翻译）"), open=False):
        gr.Markdown(T(
            "Turns CNN/DailyMail, SQuAD v2 or WMT19 files on this machine into alpaca data with the reference "
            "instruction prompts, and registers the result in the dataset folder above. Same as "
            "`python -m workbench data convert`.",
            "把本机上的 CNN/DailyMail、SQuAD v2 或 WMT19 文件转换为带参考指令提示词的 alpaca 数据，并注册到上面的数据集目录。"
            "等同于 `python -m workbench data convert`。"))
        with gr.Row():
            conv_task = gr.Dropdown(choices=["cnn_dailymail", "squad_v2", "wmt19"], value="cnn_dailymail",
                                    label=T("Task", "任务"), elem_id="wb-conv-task")
            conv_direction = gr.Dropdown(choices=["zh-en", "en-zh"], value="zh-en",
                                         label=T("Translation direction", "翻译方向"), elem_id="wb-conv-direction")
            conv_name = gr.Textbox(label=T("Dataset name", "数据集名称"), elem_id="wb-conv-name")
        with gr.Row():
            conv_input = gr.Textbox(label=T("Input file (json / jsonl / parquet / csv)", "输入文件"),
                                    elem_id="wb-conv-input")
            conv_source = gr.Textbox(label=T("WMT: source text file (one sentence per line)", "WMT：源语言文本文件"),
                                     elem_id="wb-conv-source")
            conv_target = gr.Textbox(label=T("WMT: target text file (line-aligned)", "WMT：目标语言文本文件"),
                                     elem_id="wb-conv-target")
        with gr.Row():
            # No minimum: an empty box arrives as 0 and means "no limit".
            conv_max = gr.Number(value=None, precision=0, label=T("Max samples (random; empty: all)",
                                                                  "最大样本数（随机；留空为全部）"), elem_id="wb-conv-max")
            conv_seed = gr.Number(value=42, precision=0, label=T("Seed", "随机种子"))
            conv_keywords = gr.Textbox(label=T("Drop rows containing (comma-separated)", "过滤关键词（逗号分隔）"),
                                       elem_id="wb-conv-keywords")
            conv_max_chars = gr.Number(value=None, precision=0, label=T("Max input characters (empty: no limit)",
                                                                        "最大输入字符数（留空不限）"))
            conv_keep = gr.Checkbox(value=False, label=T("SQuAD: keep unanswerable (answer: unanswerable)",
                                                         "SQuAD：保留无法回答的问题"))
        conv_btn = gr.Button(T("Convert and register", "转换并注册"), elem_id="wb-conv-run")
        conv_status = gr.Markdown(elem_id="wb-conv-status")

    source_outputs = [source_state, status, formatting, ranking, *column_dds, *tag_boxes, tags_panel, rows_table,
                      save_name, preview_state, rendered, stats_md, histogram]
    stale = [save_status, conv_status]  # what an open or a preview that worked clears
    template_inputs = [ctx.model, ctx.template] if ctx.model is not None else [
        gr.State("smollm2-135m-instruct"), gr.State("auto")]
    option_inputs = [cutoff, train_on_prompt, mask_history]

    dataset.input(on_open, inputs=[data_dir, dataset], outputs=[*source_outputs, *stale])
    upload.upload(on_upload, inputs=upload, outputs=[*source_outputs, upload, *stale])
    refresh.click(on_folder, inputs=data_dir, outputs=[dataset, status])
    data_dir.submit(on_folder, inputs=data_dir, outputs=[dataset, status])
    formatting.input(on_format, inputs=[formatting, source_state], outputs=column_dds)
    preview_btn.click(
        on_preview,
        inputs=[source_state, formatting, ranking, *column_dds, *tag_boxes, *template_inputs, *option_inputs,
                example_no],
        outputs=[preview_state, status, rendered, stats_md, histogram, *stale],
    )
    example_no.change(on_example, inputs=[preview_state, example_no, *template_inputs, *option_inputs],
                      outputs=rendered)
    save_btn.click(on_save, inputs=[source_state, data_dir, save_name, formatting, ranking, *column_dds, *tag_boxes,
                                    version], outputs=[save_status, dataset, version, conv_status])
    conv_btn.click(on_convert, inputs=[data_dir, conv_task, conv_direction, conv_name, conv_input, conv_source,
                                       conv_target, conv_max, conv_seed, conv_keywords, conv_max_chars, conv_keep,
                                       version], outputs=[conv_status, dataset, version, save_status])


# -- opening a file -----------------------------------------------------------------------------------

def opened(source: di.Source, where: str, name: str) -> list:
    """The source outputs for a file that opened."""
    # Show the role tags whenever the file has them, so nobody has to find them from an error.
    panel = gr.update(open=True) if source.formatting != "alpaca" and source.tags else gr.update()
    return [source, _summary(source, where), gr.update(value=source.formatting), gr.update(value=source.ranking),
            *_column_updates(source, source.formatting), *_tag_updates(source), panel, _table(source), name,
            None, None, "", None]


def failed(exc: Exception, where: str, upload: str | None = None) -> list:
    """The source outputs for a file that did not open (an upload named by its own name, not Gradio's path)."""
    # The state keeps why nothing is open, so Preview and Save can say it instead of "open a file first".
    why = error_text(exc, mark=False, upload=upload)
    return [f"{where} could not be opened: {why}", say(f"❌ {why}"), gr.update(), gr.update(),
            *[gr.update() for _ in di.MAPPABLE_COLUMNS], *[gr.update() for _ in TAG_KEYS], gr.update(), EMPTY_ROWS,
            gr.update(), None, None, "", None]


def _folder(value: str | None) -> Path:
    """The folder box's path; an emptied box means the default folder (never the directory the app runs in)."""
    text = str(value or "").strip()
    return Path(text).expanduser() if text else default_dataset_dir()


def on_open(folder: str, name: str):
    """The source outputs, then the save and convert messages (cleared once a dataset opened)."""
    folder = _folder(folder)
    if not name:
        return [gr.update() for _ in range(SOURCE_OUTPUTS + 2)]
    try:
        source = di.open_registered(folder, name)
    except Exception as exc:
        return failed(exc, f"dataset {name}") + [gr.update(), gr.update()]
    return opened(source, f"{name} ({source.path.name})", f"{name}_copy") + ["", ""]


def on_upload(path: str | None):
    """The source outputs, the upload box, then the save and convert messages (cleared once the file opened)."""
    if not path:
        return [gr.update() for _ in range(SOURCE_OUTPUTS + 3)]
    where = f"upload {Path(path).name}"
    try:
        source = di.open_upload(path)
    except Exception as exc:  # the upload box is cleared so another file can be dropped in
        return failed(exc, where, upload=path) + [None, gr.update(), gr.update()]
    return opened(source, where, di.safe_file_name(Path(path).stem)) + [gr.update(), "", ""]


def on_folder(folder: str):
    folder = _folder(folder)
    try:
        names = list(di.read_info(folder))
    except Exception as exc:
        return gr.update(choices=[], value=None), error_text(exc)
    return gr.update(choices=names or [], value=None), "" if names else say(f"{NO_DATASETS} `{folder}`")


def on_format(fmt: str, source: di.Source | str | None):
    if not isinstance(source, di.Source):
        return [gr.update(visible=_visible(k, fmt)) for k in di.MAPPABLE_COLUMNS]
    return _column_updates(source, fmt)


# -- preview and save ---------------------------------------------------------------------------------

def current_spec(source, fmt, rank, columns, tags):
    if isinstance(source, str):  # the last open failed: say why, not that nothing was ever opened
        raise WorkbenchError(f"no file is open: {source}; upload a fixed file or pick a registered dataset")
    if source is None:
        raise WorkbenchError("open a registered dataset or upload a file first")
    cols, tag_map = _mapping(fmt, rank, columns, tags)
    entry = di.make_entry(source.path.name, fmt, bool(rank), cols, tag_map)
    return di.spec_for(source, entry), entry


def render(prev: di.Preview | None, index, model, template_name, cut, top, mh):
    if prev is None or not prev.records:
        return None
    tokenizer = di.tokenizer_for(model)
    template = resolve_template(template_name, model)
    pieces = prev.pieces(int(index or 1) - 1, template, tokenizer, cutoff_len=int(cut or 0) or None,
                         train_on_prompt=bool(top), mask_history=bool(mh))
    return [(text, "trained" if trained else None) for text, trained in pieces]


def _upload_of(source) -> str | None:
    """The path of an uploaded (not registered) file, to name it by its own name in errors."""
    return str(source.path) if isinstance(source, di.Source) and source.name is None else None


def on_preview(source, fmt, rank, *rest):
    """The preview, then the save and convert messages (cleared when the preview worked)."""
    columns, tags, (model, template_name, cut, top, mh, index) = _split_mapping(rest)
    try:
        spec, _ = current_spec(source, fmt, rank, columns, tags)
        tokenizer = di.tokenizer_for(model)
        template = resolve_template(template_name, model)
        prev = di.preview(spec, template, tokenizer, cutoff_len=int(cut or 1024), max_rows=MAX_PREVIEW_ROWS,
                          train_on_prompt=bool(top), mask_history=bool(mh))
        shown = render(prev, index, model, template_name, cut, top, mh)
    except Exception as exc:
        return None, error_text(exc, upload=_upload_of(source)), None, "", None, gr.update(), gr.update()
    capped = f" (first {MAX_PREVIEW_ROWS} rows)" if prev.rows_read >= MAX_PREVIEW_ROWS else ""
    lines = [f"✅ {PREVIEWED} **{len(prev.records)} examples** read as **{fmt}/{prev.kind}**{capped}, template "
             f"**{template.name}**, tokenizer of **{model}**.",
             "Columns used: " + (", ".join(f"`{k}` ← `{v}`" for k, v in prev.used.items()) or "none")]
    lines += [f"⚠️ {w}" for w in prev.warnings]
    lines += [f"⚠️ template {template.name}: {note}" for note in prev.template_notes]
    stats = prev.stats.text()
    return prev, say("\n\n".join(lines)), shown, stats, histogram_figure(prev.stats), "", ""


def on_example(prev, index, model, template_name, cut, top, mh):
    try:
        return render(prev, index, model, template_name, cut, top, mh)
    except Exception:
        traceback.print_exc()
        return None


def on_save(source, folder, name, fmt, rank, *rest):
    """The save message, the dataset picker, the datasets version, then the convert message (cleared)."""
    columns, tags, (ver,) = _split_mapping(rest)
    folder = _folder(folder)
    try:
        _, entry = current_spec(source, fmt, rank, columns, tags)
        had_registry = info_path(folder).is_file()  # only then is the old one kept as .bak
        path = di.register(folder, name, source, entry)
    except Exception as exc:
        return error_text(exc, upload=_upload_of(source)), gr.update(), ver, gr.update()
    names = dataset_names(folder)
    return (say(f"✅ {SAVED_BAK if had_registry else SAVED} **{name.strip()}** → `{path}`"),
            gr.update(choices=names, value=name.strip()), ver + 1, "")


def _optional_path(value):
    return Path(value.strip()).expanduser() if value and value.strip() else None


def on_convert(folder, task, direction, name, inp, src, tgt, max_samples, seed, keywords, max_chars, keep, ver):
    folder = _folder(folder)
    try:
        opts = ConvertOptions(
            task=task, output=Path("unset.json"), input=_optional_path(inp), source=_optional_path(src),
            target=_optional_path(tgt), max_samples=int(max_samples) if max_samples else None, seed=int(seed or 42),
            drop_keywords=[keywords or ""],  # split by the converter (ASCII and full-width commas, 、)
            max_input_chars=int(max_chars) if max_chars else None, direction=direction,
            keep_unanswerable=bool(keep),
        )
        report = convert_and_register(opts, folder, name)
    except Exception as exc:
        return error_text(exc), gr.update(), ver, gr.update()
    names = dataset_names(folder)
    text = say(f"✅ {CONVERTED}  \n" + "  \n".join(report.lines()))
    return text, gr.update(choices=names, value=name.strip()), ver + 1, ""
