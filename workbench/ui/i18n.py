"""English and Simplified Chinese UI text, declared where it is used: ``T("Load", "加载")``.

Gradio translates in the browser (its locale, or the language chosen in the footer's Settings),
so every label goes through :func:`T`, which registers both texts under a stable key.
"""

from __future__ import annotations

import hashlib

import gradio as gr

EN: dict[str, str] = {}
ZH: dict[str, str] = {}
I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH})


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
