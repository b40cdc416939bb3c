"""Judging the Chat tab's compare answers: under the compare columns the user picks the better answer on screen
("👍 this one", optionally edited first, or "👎 both bad"); :mod:`workbench.data.preferences` keeps each
judgement as ranking data for rm / dpo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.data import preferences
from workbench.infer.engine import BASE
from workbench.paths import default_dataset_dir
from workbench.rundir import read_export_record
from workbench.ui.binding import bind
from workbench.ui.context import DATASETS_VERSION, AppContext, error_text
from workbench.ui.i18n import T

MAX_COLUMNS = 4  # compare columns on screen (the engine itself takes any number of variants)
GENERATED = "generated"  # an answer's key in the compare histories: its batch and settings (never rendered)
MAX_JUDGED = 200  # fingerprints of judged turns remembered per session (a turn is judged once)


def session_key(request: gr.Request | None) -> str:
    """The browser session's key in the tab's map of what is generating now."""
    return request.session_hash if request else "-"


class Claim:
    """A browser session's turn at generating, taken before anything starts: a second Send, Regenerate or tool
    result of the session (a fast second click, Enter in the message box) is refused with a note instead of racing
    the first and overwriting its history. Stop cancels what the claim runs, even before it started."""

    def __init__(self) -> None:
        self.target = None  # the answer (RowHandle) or batch (Batch) generating
        self.cancelled = False

    def run(self, target) -> None:
        self.target = target
        if self.cancelled:
            target.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        if self.target is not None:
            self.target.cancel()


def claim_session(active: dict, key: str) -> Claim | None:
    """The session's claim, or None while it is generating already (``setdefault`` is atomic: two handlers of one
    session never both get it)."""
    claim = Claim()
    return claim if active.setdefault(key, claim) is claim else None


def release_session(active: dict, key: str, claim: Claim) -> None:
    if active.get(key) is claim:
        del active[key]


def base_name(loaded) -> str:
    """What the loaded model itself answers as: "base", or a merged model's own name (an export directory loaded
    as the model is no plain base: its adapters are merged in)."""
    if loaded is not None and read_export_record(loaded.model_path) is not None:
        return Path(str(loaded.label).rstrip("/")).name or BASE
    return BASE


def variant_labels(manager) -> dict[str, str]:
    """{variant: what the Chat tab calls it}: the loaded model under :func:`base_name`, adapters by their names."""
    return {BASE: base_name(manager.current())}


def label_of(labels: dict[str, str], name: str) -> str:
    return labels.get(name, name)


def compare_answers(convs: dict[str, list[dict]], shown: list[str], column: str | None = None
                    ) -> list[preferences.Answer]:
    """The answers on screen that were generated together with ``column``'s last answer (default: the most recent
    batch): the last answer of each shown column from that batch. A column that did not answer that turn (it
    called no tool, or has no answer yet) is left out."""
    found = []
    for name in list(shown or [])[:MAX_COLUMNS]:
        conv = list(convs.get(name) or [])
        split = preferences.last_answer(conv)
        if split is None:
            continue
        meta = conv[-1].get(GENERATED) or {}
        answer = preferences.Answer(name, split[0], split[1], meta.get("sampling"), meta.get("system"),
                                    meta.get("tools"))
        found.append((answer, meta.get("batch"), meta.get("time", 0.0)))
    if column is not None:
        batches = [b for a, b, _ in found if a.model == column]
        if not batches:
            return []
        batch = batches[0]
    elif found:
        batch = max(found, key=lambda f: f[2])[1]
    else:
        return []
    return [a for a, b, _ in found if b == batch]


@dataclass
class Judging:
    """The judging controls under the compare columns."""
    box: Any
    columns: list          # one column of buttons under each compare column
    prefer_buttons: list
    edit_buttons: list
    both_bad_button: Any
    dataset_name: Any
    edit_box: Any
    edit_text: Any
    keep_button: Any
    cancel_button: Any
    status: Any


def build_judging() -> Judging:
    """The judging controls, in the current layout (hidden until compare mode)."""
    with gr.Column(visible=False, elem_id="chat-judge") as box:
        gr.Markdown(T(
            "**Which answer is better?** Each judgement of the answers on screen is kept as preference data "
            "(chosen / rejected) in the Data tab's folder, for training with stage `rm` or `dpo`.",
            "**哪个回答更好？** 对屏幕上回答的每次评判都会作为偏好数据（优选 / 劣选）保存在数据标签页的目录中，"
            "可用于 `rm` 或 `dpo` 阶段训练。"))
        columns, prefer_buttons, edit_buttons = [], [], []
        with gr.Row(equal_height=True):
            for i in range(MAX_COLUMNS):
                with gr.Column(visible=(i == 0), min_width=160) as column:
                    prefer_buttons.append(gr.Button(f"👍 {BASE}", size="sm", elem_id=f"chat-prefer-{i}"))
                    edit_buttons.append(gr.Button(T("✏️ Edit it, then keep", "✏️ 编辑后保留"), size="sm",
                                                  elem_id=f"chat-edit-{i}"))
                columns.append(column)
        with gr.Row(equal_height=True):
            both_bad_button = gr.Button(T("👎 Both bad (none is better)", "👎 都不好（没有更好的）"), size="sm",
                                        scale=1, elem_id="chat-both-bad")
            dataset_name = gr.Textbox(value=preferences.DEFAULT_DATASET, scale=2, elem_id="chat-pref-name",
                                      label=T("Keep judgements in dataset", "评判保存到数据集"))
        with gr.Column(visible=False) as edit_box:
            edit_text = gr.Textbox(label=T("Edit the better answer, then keep it", "编辑更好的回答，然后保留"),
                                   lines=4, elem_id="chat-edit-text")
            with gr.Row():
                keep_button = gr.Button(T("Keep the edited answer as the better one", "将编辑后的回答保留为更好的回答"),
                                        variant="primary", elem_id="chat-edit-keep")
                cancel_button = gr.Button(T("Cancel", "取消"), elem_id="chat-edit-cancel")
        status = gr.Markdown(elem_id="chat-judge-status")
    return Judging(box, columns, prefer_buttons, edit_buttons, both_bad_button, dataset_name, edit_box, edit_text,
                   keep_button, cancel_button, status)


def wire_judging(judging: Judging, ctx: AppContext, active: dict, mode, compare_pick, histories,
                 clear_button) -> None:
    """The judging events; Clear forgets the session's judgements. ``active`` maps a session to what it is
    generating now (judging waits for it)."""
    judged = gr.State([])      # fingerprints of the turns judged in this session (each turn is judged once)
    pending = gr.State(None)   # an edit in progress: {"column", "fingerprint"}
    datasets_version = ctx.version(DATASETS_VERSION)  # bumped when a dataset is registered (Train tab picker)
    folder_input = ctx.extras.get("data_dir")  # the Data tab's folder box: judgements go where datasets are
    if folder_input is None:
        folder_input = gr.State(str(default_dataset_dir()))
    inputs = [compare_pick, histories, judging.dataset_name, folder_input, judged, datasets_version]
    outputs = [judging.status, judged, datasets_version, judging.edit_box, pending]
    for i in range(MAX_COLUMNS):
        judging.prefer_buttons[i].click(bind(on_prefer, ctx, active, i), inputs, outputs)
        judging.edit_buttons[i].click(bind(on_edit, active, i), [compare_pick, histories, judged],
                                      [judging.edit_box, judging.edit_text, pending, judging.status])
    judging.keep_button.click(bind(on_keep, ctx, active), [judging.edit_text, pending, *inputs], outputs)
    judging.cancel_button.click(cancel_edit, None, [judging.edit_box, pending, judging.status])
    judging.both_bad_button.click(bind(on_both_bad, ctx, active), inputs[:-1],
                                  [judging.status, judged, judging.edit_box, pending])
    # The buttons are named like the columns, on the same events: a model loaded since keeps the picked variants
    # (no change event) but may rename them ("base" → the merged model's name), and switching to Compare shows it.
    for relabel in (compare_pick.change, mode.change):
        relabel(bind(judge_columns, ctx.manager), compare_pick, [*judging.columns, *judging.prefer_buttons])
    clear_button.click(reset_judging, None, [judged, pending, judging.edit_box, judging.status])


# -- handlers ---------------------------------------------------------------------------------------

def judge_columns(manager, columns):
    """One column of judging buttons under each compare column, named after it."""
    columns, labels = list(columns or [])[:MAX_COLUMNS], variant_labels(manager)
    cols = [gr.update(visible=i < len(columns)) for i in range(MAX_COLUMNS)]
    buttons = [gr.update(value=f"👍 {label_of(labels, columns[i])}") if i < len(columns) else gr.update()
               for i in range(MAX_COLUMNS)]
    return (*cols, *buttons)


def shown_column(shown, index: int) -> str:
    shown = list(shown or [])[:MAX_COLUMNS]
    if index >= len(shown):
        raise WorkbenchError("that column is not shown")
    return shown[index]


def turn_to_judge(active: dict, shown, convs, column: str | None, judged_fps, request) -> list:
    """The answers a judgement is about: those on screen, never new ones; refused while they are generating."""
    if active.get(session_key(request)) is not None:
        raise WorkbenchError("the answers are still being generated: judge them when they are complete "
                             "(or press Stop)")
    answers = compare_answers(convs or {}, shown, column)
    if not answers:
        raise WorkbenchError(f"{column or 'no column'} has no answer on screen yet: send a message first")
    if preferences.fingerprint(answers) in (judged_fps or []):
        raise WorkbenchError("these answers were judged already; ask the next question (or Regenerate) to judge "
                             "again")
    return answers


def keep(ctx: AppContext, folder, name, answers, column, edited=None):
    loaded = ctx.manager.current()
    folder = str(folder or "").strip() or str(default_dataset_dir())
    return preferences.record(folder, name, answers, column, edited=edited,
                              base_model=loaded.label if loaded else None)


def kept(ctx: AppContext, answers, column, saved, judged_fps, version, edited=False):
    """(status, judged, datasets version, edit box, pending) once a judgement is kept."""
    labels = variant_labels(ctx.manager)
    others = ", ".join(f"**{label_of(labels, a.model)}**" for a in answers if a.model != column)
    verdict = f"👍 **{label_of(labels, column)}**{' (edited)' if edited else ''} over {others}"
    fps = [*(judged_fps or []), preferences.fingerprint(answers)][-MAX_JUDGED:]
    return (f"✅ {verdict}. {preferences.describe(saved)}", fps, version + 1 if saved.registered else gr.skip(),
            gr.update(visible=False), None)


def on_prefer(ctx: AppContext, active: dict, index: int, shown, convs, name, folder, judged_fps, version,
              request: gr.Request):
    try:
        column = shown_column(shown, index)
        answers = turn_to_judge(active, shown, convs, column, judged_fps, request)
        saved = keep(ctx, folder, name, answers, column)
    except Exception as exc:
        return error_text(exc), gr.skip(), gr.skip(), gr.update(), gr.skip()
    return kept(ctx, answers, column, saved, judged_fps, version)


def on_edit(active: dict, index: int, shown, convs, judged_fps, request: gr.Request):
    try:
        column = shown_column(shown, index)
        answers = turn_to_judge(active, shown, convs, column, judged_fps, request)
    except Exception as exc:
        return gr.update(), gr.update(), gr.skip(), error_text(exc)
    mine = next(a for a in answers if a.model == column)
    if len(answers) < 2:
        return gr.update(), gr.update(), gr.skip(), error_text(WorkbenchError(
            f"only {column} answered this turn: there is nothing to compare its answer with"))
    return (gr.update(visible=True), gr.update(value=mine.message.get("content") or ""),
            {"column": column, "fingerprint": preferences.fingerprint(answers)},
            f"✏️ Edit **{column}**'s answer, then press *Keep the edited answer*.")


def on_keep(ctx: AppContext, active: dict, text, edit, shown, convs, name, folder, judged_fps, version,
            request: gr.Request):
    try:
        if not edit:
            raise WorkbenchError("press ✏️ under an answer first")
        if not (text or "").strip():
            raise WorkbenchError("the edited answer is empty")
        column = edit["column"]
        answers = turn_to_judge(active, shown, convs, column, judged_fps, request)
        if preferences.fingerprint(answers) != edit["fingerprint"]:
            raise WorkbenchError("the answers on screen changed since you started editing (a new or regenerated "
                                 "answer); press ✏️ again")
        saved = keep(ctx, folder, name, answers, column, edited=text)
    except Exception as exc:
        return error_text(exc), gr.skip(), gr.skip(), gr.update(), gr.skip()
    original = next(a for a in answers if a.model == column).message.get("content") or ""
    return kept(ctx, answers, column, saved, judged_fps, version, edited=text.strip() != original.strip())


def cancel_edit():
    return gr.update(visible=False), None, ""


def on_both_bad(ctx: AppContext, active: dict, shown, convs, name, folder, judged_fps, request: gr.Request):
    try:
        answers = turn_to_judge(active, shown, convs, None, judged_fps, request)
        saved = keep(ctx, folder, name, answers, None)
    except Exception as exc:
        return error_text(exc), gr.skip(), gr.update(), gr.skip()
    fps = [*(judged_fps or []), preferences.fingerprint(answers)][-MAX_JUDGED:]
    names = ", ".join(f"**{a.model}**" for a in answers)
    return f"👎 {names}: {preferences.describe(saved)}", fps, gr.update(visible=False), None


def reset_judging():
    """What Clear does to the judging: (judged, pending, edit box, status)."""
    return [], None, gr.update(visible=False), ""
