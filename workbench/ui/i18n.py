"""English and Simplified Chinese UI text, declared where it is used: ``T("Load", "加载")``.

Gradio translates in the browser (its locale, or the language chosen in the footer's Settings),
so every label goes through :func:`T`, which registers both texts under a stable key.

Messages built on the server (a status line, an error) go through :func:`say`: the catalogued phrase it
starts with (:func:`message`) is replaced by the browser, the rest (names, paths, numbers) stays as written.
Gradio's frontend translates one phrase per value, and only phrases it was sent with the page, so a message
has one catalogued phrase, at its start, declared when its module is imported.
"""

from __future__ import annotations

import hashlib

import gradio as gr

EN: dict[str, str] = {}
ZH: dict[str, str] = {}
I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH})
# English phrase → its translation marker: what :func:`say` replaces at the start of a message.
MESSAGES: dict[str, object] = {}
MARKS = "✅❌⏳⏹⚠️ "  # what a message may start with before its phrase


def T(en: str, zh: str | None = None):
    """A translatable text; without a Chinese text the English one is shown in both."""
    key = "wb." + hashlib.sha1(en.encode("utf-8")).hexdigest()[:12]
    EN[key] = en
    if zh or key not in ZH:
        ZH[key] = zh or en
    return I18N(key)


def english(text) -> str:
    """The English text behind a T() value (for messages built on the server)."""
    key = getattr(text, "key", None)
    return EN.get(key, str(text)) if key else str(text)


def message(en: str, zh: str) -> str:
    """Catalogue the leading phrase of server messages (at import time, so the page is sent it); returns ``en``."""
    MESSAGES[en] = T(en, zh)
    return en


def say(text: str) -> str:
    """``text`` for a status or error box: a leading catalogued phrase (after any ✅/❌/⏳/⚠️) is shown in the
    page's language, the rest as written. Text that starts with no catalogued phrase is returned unchanged."""
    body = text.lstrip(MARKS)
    lead = text[:len(text) - len(body)]
    found = max((en for en in MESSAGES if body.startswith(en)), key=len, default=None)
    if found is None:
        return text
    return f"{lead}{MESSAGES[found]}{body[len(found):]}"


# Errors of the core that the tabs show as they are (ui/context.error_text), by their fixed beginning.
for _en, _zh in (
    ("open a registered dataset or upload a file first", "请先打开已注册的数据集或上传文件"),
    ("give the dataset a name", "请为数据集命名"),
    ("a dataset name is required", "需要数据集名称"),
    ("choose at least one task", "请至少选择一个任务"),
    ("choose the base model", "请选择基座模型"),
    ("nothing to evaluate: choose adapters, or include the base model", "没有可评测的模型：请选择适配器，或勾选评测基座模型"),
    ("no file is open:", "没有打开的文件："),
    # A job's end (ui/runwatch.abort_watched, the Evaluate and Export tabs).
    ("Nothing is running.", "没有正在运行的任务。"),
    ("Aborted:", "已中止："),
    ("Finished:", "已完成："),
):
    message(_en, _zh)
