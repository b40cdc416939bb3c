"""Token-length statistics and rendered previews with the trained tokens marked (used by the CLI and the Data tab)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from workbench.data import records as R
from workbench.data.templates import IGNORE_INDEX, Template


@dataclass
class LengthStats:
    lengths: list[int]  # tokens per example, before truncation
    trained: list[int]  # trained (label) tokens per example, before truncation
    cutoff_len: int | None
    dropped: int = 0
    # What cutoff_len does to the longer examples, as in training: prompt_shortened / truncated / dropped.
    shortening: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        n = len(self.lengths)
        if not n:
            return {"examples": 0}
        ordered = sorted(self.lengths)
        out = {
            "examples": n,
            "min": ordered[0],
            "mean": round(statistics.fmean(ordered), 1),
            "median": statistics.median(ordered),
            "p95": ordered[min(n - 1, int(0.95 * n))],
            "max": ordered[-1],
            "trained_mean": round(statistics.fmean(self.trained), 1) if self.trained else 0,
            "total_tokens": sum(ordered),
        }
        if self.cutoff_len:
            out["over_cutoff"] = sum(1 for x in ordered if x > self.cutoff_len)
            out.update({f"cutoff_{k}": v for k, v in self.shortening.items()})
        return out

    def text(self) -> str:
        s = self.summary()
        if not s["examples"]:
            return "no examples"
        line = (f"{s['examples']} examples · tokens min {s['min']} / median {s['median']} / mean {s['mean']} / "
                f"p95 {s['p95']} / max {s['max']} · trained tokens per example (mean) {s['trained_mean']}")
        if self.cutoff_len:
            line += f" · {s['over_cutoff']} longer than cutoff_len={self.cutoff_len}"
            parts = [f"{n} {what}" for key, what in (("prompt_shortened", "with the prompt shortened to keep the answer"),
                                                      ("dropped", "dropped (no answer token fits)"))
                     if (n := self.shortening.get(key))]
            if parts:
                line += f" ({', '.join(parts)})"
        return line


def _conversation_of(record: R.Record) -> tuple[list[dict], str | None, Any] | None:
    if isinstance(record, R.Conversation):
        return record.messages, record.system, record.tools
    if isinstance(record, R.Preference):
        return record.prompt + [record.chosen], record.system, record.tools
    return None


def token_lengths(records: list[R.Record], template: Template, tokenizer, *, cutoff_len: int | None = None,
                  train_on_prompt: bool = False, mask_history: bool = False, default_system: str | None = None,
                  batch_size: int = 512) -> LengthStats:
    """Lengths of the examples as the trainer would see them (preference pairs: prompt + chosen)."""
    lengths, trained = [], []
    dropped = 0
    texts = [r.text + (tokenizer.eos_token or "") for r in records if isinstance(r, R.Text)]
    if texts:
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            lengths.append(len(ids))
            trained.append(len(ids))
    convs = []
    for r in records:
        conv = _conversation_of(r)
        if conv is not None:
            messages, system, tools = conv
            convs.append((messages, system if system is not None else default_system, tools))
    too_long = []
    for i in range(0, len(convs), batch_size):
        part = convs[i:i + batch_size]
        for conv, item in zip(part, template.encode_supervised_batch(tokenizer, part, train_on_prompt=train_on_prompt,
                                                                     mask_history=mask_history)):
            if item is None:
                dropped += 1
                continue
            ids, labels = item
            lengths.append(len(ids))
            trained.append(sum(1 for x in labels if x != IGNORE_INDEX))
            if cutoff_len and len(ids) > cutoff_len:
                too_long.append(conv)
    shortening: dict[str, int] = {}
    if too_long:  # only the long ones go through the truncation rule a second time
        template.encode_supervised_batch(tokenizer, too_long, train_on_prompt=train_on_prompt,
                                         mask_history=mask_history, cutoff_len=cutoff_len, stats=shortening)
    return LengthStats(lengths, trained, cutoff_len, dropped, shortening)


def marked_pieces(record: R.Record, template: Template, tokenizer, *, cutoff_len: int | None = None,
                  train_on_prompt: bool = False, mask_history: bool = False, default_system: str | None = None
                  ) -> list[tuple[str, bool]]:
    """The example as the model sees it, in runs of (text, trained?) — after cutoff_len, like training."""
    if isinstance(record, R.Text):
        ids = tokenizer(record.text + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        if cutoff_len:
            ids = ids[:cutoff_len]
        return [(tokenizer.decode(ids), True)]
    messages, system, tools = _conversation_of(record)  # type: ignore[misc]
    if system is None:
        system = default_system
    ids, labels = template.encode_supervised(tokenizer, messages, system, tools, train_on_prompt=train_on_prompt,
                                             mask_history=mask_history, cutoff_len=cutoff_len)
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    state = None
    for tok, lab in zip(ids, labels):
        flag = lab != IGNORE_INDEX
        if state is not None and flag != state:
            pieces.append((tokenizer.decode(run), state))
            run = []
        run.append(tok)
        state = flag
    if run:
        pieces.append((tokenizer.decode(run), bool(state)))
    if isinstance(record, R.Preference):
        rejected = template.response_text(tokenizer, record.rejected)
        pieces.append(("\n\n── rejected answer (not part of the example above) ──\n" + rejected, False))
    return pieces


def marked_text(pieces: list[tuple[str, bool]], *, color: bool = False) -> str:
    """Pieces as one string: trained runs in green (terminal) or between ⟦ and ⟧."""
    if color:
        return "".join(f"\x1b[42;30m{t}\x1b[0m" if trained else t for t, trained in pieces)
    return "".join(f"⟦{t}⟧" if trained else t for t, trained in pieces)


def histogram_figure(stats: LengthStats, title: str = "Tokens per example"):
    """A plotly histogram of example lengths with the cutoff marked."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=stats.lengths, nbinsx=min(60, max(5, len(stats.lengths) // 2)),
                                 name="examples", marker_color="#6366f1"))
    if stats.cutoff_len:
        fig.add_vline(x=stats.cutoff_len, line_dash="dash", line_color="#dc2626",
                      annotation_text=f"cutoff_len = {stats.cutoff_len}", annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="tokens", yaxis_title="examples", bargap=0.05,
                      margin=dict(l=40, r=20, t=50, b=40), height=320, showlegend=False)
    return fig
