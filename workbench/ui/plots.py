"""Plotly figures for training curves, from progress.jsonl entries (see workbench/train/callbacks.py)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.train.plot import smooth
from workbench.rundir import format_duration

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d")
# Reward metrics (rm/dpo) drawn on a second axis, under the names progress.jsonl uses.
REWARD_KEYS = ("reward_accuracy", "reward_margin", "eval_reward_accuracy", "eval_reward_margin")


def _train(entries: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    rows = [(e["step"], e["loss"]) for e in entries
            if e.get("kind", "train") == "train" and e.get("loss") is not None and e.get("step") is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def _series(entries: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [(e["step"], e[key]) for e in entries if e.get(key) is not None and e.get("step") is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def _layout(fig: go.Figure, title: str, second_axis: bool) -> go.Figure:
    fig.update_layout(
        title=title, height=360, margin=dict(l=50, r=50 if second_axis else 20, t=40, b=40),
        xaxis_title="step", yaxis_title="loss", legend=dict(orientation="h", y=-0.2), template="plotly_white",
    )
    if second_axis:
        fig.update_layout(yaxis2=dict(title="reward", overlaying="y", side="right", showgrid=False))
    return fig


def loss_figure(entries: list[dict[str, Any]], title: str = "") -> go.Figure:
    """One run: raw training loss, its smoothed curve, eval loss, and reward metrics when present."""
    fig = go.Figure()
    steps, loss = _train(entries)
    if steps:
        fig.add_trace(go.Scatter(x=steps, y=loss, name="loss", mode="lines", line=dict(color=COLORS[0], width=1),
                                 opacity=0.35))
        fig.add_trace(go.Scatter(x=steps, y=smooth(loss), name="loss (smoothed)", mode="lines",
                                 line=dict(color=COLORS[0], width=2.5)))
    eval_steps, eval_loss = _series(entries, "eval_loss")
    if eval_steps:
        fig.add_trace(go.Scatter(x=eval_steps, y=eval_loss, name="eval loss", mode="lines+markers",
                                 line=dict(color=COLORS[1], width=2)))
    second = False
    for i, key in enumerate(REWARD_KEYS):
        xs, ys = _series(entries, key)
        if xs:
            second = True
            fig.add_trace(go.Scatter(x=xs, y=ys, name=key.replace("_", " "), mode="lines+markers", yaxis="y2",
                                     line=dict(color=COLORS[2 + i], width=1.5, dash="dot")))
    return _layout(fig, title, second)


def overlay_figure(runs: dict[str, list[dict[str, Any]]], title: str = "Loss of the selected runs") -> go.Figure:
    """Several runs: the smoothed training loss of each (raw faint behind it) and their eval loss."""
    fig = go.Figure()
    for i, (name, entries) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        steps, loss = _train(entries)
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=loss, name=f"{name} (raw)", mode="lines", showlegend=False,
                                     line=dict(color=color, width=1), opacity=0.25, legendgroup=name))
            fig.add_trace(go.Scatter(x=steps, y=smooth(loss), name=name, mode="lines",
                                     line=dict(color=color, width=2.5), legendgroup=name))
        xs, ys = _series(entries, "eval_loss")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=f"{name} eval", mode="markers+lines",
                                     line=dict(color=color, width=1.5, dash="dash"), legendgroup=name))
    return _layout(fig, title, False)


def progress_html(step: int | None, total: int | None, *, state: str, elapsed: float | None = None,
                  eta: float | None = None, tokens_per_second: float | None = None, waiting: str | None = None) -> str:
    """A progress bar with step/total, elapsed, ETA and tokens/s; before the first step, ``waiting`` (what the
    run is doing) in place of the step."""
    if state == "finished" and total:
        step = total
    fraction = min(1.0, step / total) if step is not None and total else 0.0
    percent = f"{fraction:.0%}"
    parts = [f"step {step}/{total}" if total else (f"⏳ {waiting}" if waiting else "waiting for the first step"),
             percent if total else ""]
    if elapsed is not None:
        parts.append(f"elapsed {format_duration(elapsed)}")
    if eta is not None and state == "running":
        parts.append(f"ETA {format_duration(eta)}")
    if tokens_per_second:
        parts.append(f"{tokens_per_second:,.0f} tokens/s")
    color = {"failed": "#dc2626", "aborted": "#a16207", "finished": "#16a34a"}.get(state, "#2563eb")
    text = " · ".join(p for p in parts if p)
    return (f'<div class="wb-progress" data-state="{state}" data-percent="{fraction * 100:.0f}">'
            f'<div style="background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden">'
            f'<div style="width:{fraction * 100:.1f}%;height:100%;background:{color};transition:width .5s"></div>'
            f'</div><div class="wb-progress-text" style="margin-top:4px;font-size:0.9em">{text}</div></div>')
