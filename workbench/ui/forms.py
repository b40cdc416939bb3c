"""Option dataclass ↔ Gradio components, generated from the fields' metadata (declared once)."""

from __future__ import annotations

import math
from dataclasses import MISSING
from typing import Any, Iterable

import gradio as gr

from workbench.config.base import _base_type, from_mapping, option_fields, resolved_hints
from workbench.ui.i18n import T

NONE_CHOICE = "none"


def label_for(name: str, meta: dict) -> Any:
    """The option's hand-written labels (``option(label=..., label_zh=...)``); its name where it has none."""
    return T(meta.get("label") or name, meta.get("label_zh"))


def number_step(tp: type, default: Any, meta: dict) -> float:
    """What the arrows of a number box add: the option's ``step``; 1 for whole numbers; for a fraction, the
    power of ten of its default's leading digit (learning_rate 5e-5 → 1e-5, temperature 0.7 → 0.1), else 0.1
    (0.01 where the default is 0: dropout, ratios)."""
    if meta.get("step") is not None:
        return meta["step"]
    if tp is int:
        return 1
    if isinstance(default, (int, float)) and 0 < abs(default) < 1:
        return 10.0 ** math.floor(math.log10(abs(default)))
    return 0.01 if not default else 0.1


def option_components(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    group: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, gr.components.Component]:
    """Create one component per option (in declaration order) inside the current layout."""
    hints = resolved_hints(cls)
    only = list(only) if only is not None else None
    skip = set(skip)
    defaults = defaults or {}
    out: dict[str, gr.components.Component] = {}
    names = only if only is not None else list(option_fields(cls))
    all_fields = option_fields(cls)
    for name in names:
        f = all_fields[name]
        meta = dict(f.metadata)
        if name in skip or not meta.get("ui", True) or (group is not None and meta.get("group") != group):
            continue
        tp, optional = _base_type(hints[name])
        default = defaults.get(name, f.default if f.default is not MISSING else f.default_factory())
        label = label_for(name, meta)
        info = T(meta["help"], meta.get("help_zh")) if meta.get("help") else None
        choices = meta.get("choices")
        if tp is bool:
            comp = gr.Checkbox(value=bool(default), label=label, info=info, elem_id=f"opt-{name}")
        elif choices:
            values = ([NONE_CHOICE] if optional else []) + [str(c) for c in choices]
            comp = gr.Dropdown(choices=values, value=NONE_CHOICE if default is None else str(default),
                               label=label, info=info, elem_id=f"opt-{name}")
        elif tp in (int, float):
            comp = gr.Number(value=default, label=label, info=info, minimum=meta.get("min"),
                             maximum=meta.get("max"), precision=0 if tp is int else None,
                             step=number_step(tp, default, meta), elem_id=f"opt-{name}")
        elif tp is list:
            comp = gr.Textbox(value=",".join(map(str, default or [])), label=label, info=info, elem_id=f"opt-{name}")
        else:
            comp = gr.Textbox(value="" if default is None else str(default), label=label, info=info,
                              elem_id=f"opt-{name}")
        out[name] = comp
    return out


def form_value(value: Any) -> Any:
    """A component value as an option value: the 'none' choice and empty text mean "not set"."""
    if value == NONE_CHOICE or (isinstance(value, str) and value.strip() == ""):
        return None
    return value


def collect(cls: type, values: dict[str, Any], *, drop_unset: bool = True) -> Any:
    """Build the option dataclass from form values (validation errors name the option)."""
    clean = {k: form_value(v) for k, v in values.items()}
    if drop_unset:
        fields = option_fields(cls)
        clean = {k: v for k, v in clean.items() if v is not None or fields[k].default is None}
    return from_mapping(cls, clean)
