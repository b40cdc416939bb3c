"""progress.jsonl: one JSON object per logging step (and per evaluation), written by the main process.

Every line has the same keys — step, total_steps, epoch, loss, eval_loss, lr, grad_norm,
tokens_per_second, elapsed, eta — (null where a value does not apply), plus ``kind`` ("train" or
"eval") and, for rm/dpo, ``reward_accuracy`` / ``reward_margin`` and TRL's own reward metrics under
their TRL names. Lines are flushed as they are written so the UI can tail the file.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

BASE_KEYS = ("step", "total_steps", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_second",
             "elapsed", "eta")
# Trainer bookkeeping that is not a per-step metric.
_SKIP = {"epoch", "learning_rate", "num_input_tokens_seen", "total_flos", "step"}
# Reward accuracy / margin under one name whichever trainer produced them.
_ACCURACY = ("accuracy", "rewards/accuracies")
_MARGIN = ("margin", "rewards/margins")


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_progress(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a progress.jsonl (a half-written last line is skipped)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def truncate_progress(path: Path, after_step: int) -> None:
    """Drop lines beyond ``after_step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    kept = [json.dumps(e) for e in read_progress(path) if int(e.get("step", 0)) <= after_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _loss(value: float | None) -> str:
    """A NaN/inf loss is stored as null (see _num): print it as "nan"."""
    return f"{value:.4f}" if value is not None else "nan"


class ProgressCallback(TrainerCallback):
    def __init__(self, path: str | Path, echo: TextIO | None = sys.stdout):
        self.path = Path(path)
        self.echo = echo
        self.started = time.time()
        self.start_step = 0
        self.last_time = self.started
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.time()
        self.start_step = state.global_step  # > 0 when resumed
        self.last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        is_eval = any(k.startswith("eval_") for k in logs)
        if not is_eval and "loss" not in logs:
            return  # the end-of-training summary goes to all_results.json
        now = time.time()
        step = state.global_step
        done = step - self.start_step
        eta = (now - self.started) / done * (state.max_steps - step) if done > 0 else None
        entry: dict[str, Any] = dict.fromkeys(BASE_KEYS)
        entry.update(
            kind="eval" if is_eval else "train",
            step=step,
            total_steps=state.max_steps,
            epoch=_num(state.epoch),
            elapsed=round(now - self.started, 3),
            eta=round(eta, 1) if eta is not None else None,
        )
        if is_eval:
            entry["eval_loss"] = _num(logs.get("eval_loss"))
        else:
            tokens = state.num_input_tokens_seen
            span = now - self.last_time
            entry.update(
                loss=_num(logs.get("loss")),
                lr=_num(logs.get("learning_rate")),
                grad_norm=_num(logs.get("grad_norm")),
                tokens_per_second=round((tokens - self.last_tokens) / span, 2) if span > 0 and tokens else None,
            )
            self.last_time, self.last_tokens = now, tokens
        prefix = "eval_" if is_eval else ""
        for key, value in logs.items():
            if key in _SKIP or key in ("loss", "eval_loss", "grad_norm") or key.endswith(("_runtime", "_per_second")):
                continue
            bare = key[len(prefix):] if key.startswith(prefix) else key
            if bare in _ACCURACY:
                entry[f"{prefix}reward_accuracy"] = _num(value)
            elif bare in _MARGIN:
                entry[f"{prefix}reward_margin"] = _num(value)
            if _num(value) is not None:
                entry[key] = _num(value)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
        if self.echo is not None:
            self.echo.write(self._line(entry) + "\n")
            self.echo.flush()

    @staticmethod
    def _line(e: dict[str, Any]) -> str:
        if e["kind"] == "eval":
            extra = f" reward_accuracy {e['eval_reward_accuracy']:.3f}" if e.get("eval_reward_accuracy") is not None else ""
            return f"[eval] step {e['step']}/{e['total_steps']} eval_loss {_loss(e['eval_loss'])}{extra}"
        parts = [f"step {e['step']}/{e['total_steps']}", f"loss {_loss(e['loss'])}"]
        if e.get("reward_accuracy") is not None:
            parts.append(f"reward_accuracy {e['reward_accuracy']:.3f}")
        if e.get("lr") is not None:
            parts.append(f"lr {e['lr']:.3g}")
        if e.get("tokens_per_second"):
            parts.append(f"{e['tokens_per_second']:.0f} tok/s")
        parts.append(f"eta {_duration(e['eta'])}")
        return "[train] " + "  ".join(parts)
