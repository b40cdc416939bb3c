"""progress.jsonl: one JSON object per logging step (and per evaluation), written by the main process.

Every line has the same keys — step, total_steps, epoch, loss, eval_loss, lr, grad_norm,
tokens_per_second, elapsed, eta — (null where a value does not apply), plus ``kind`` ("train" or
"eval") and, for rm/dpo, ``reward_accuracy`` / ``reward_margin`` and TRL's own reward metrics under
their TRL names. Lines are flushed as they are written so the UI can tail the file.

Before the first of those lines the callback keeps ``phase.json`` current (step 1 running, how long it took,
evaluating), see :func:`workbench.rundir.write_phase`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from workbench.config.base import WorkbenchError
from workbench.rundir import append_progress, format_duration, read_progress, write_phase

BASE_KEYS = ("step", "total_steps", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_second",
             "elapsed", "eta")
# Trainer bookkeeping that is not a per-step metric.
_SKIP = {"epoch", "learning_rate", "num_input_tokens_seen", "total_flos", "step"}
# Reward accuracy / margin under one name whichever trainer produced them.
_ACCURACY = ("accuracy", "rewards/accuracies")
_MARGIN = ("margin", "rewards/margins")
# This many rises of the eval loss in a row (each evaluation above the one before) is pointed out as overfitting.
EVAL_RISES_WARN = 3


def eval_loss_rises(entries: list[dict[str, Any]]) -> tuple[int, list[float]]:
    """How many evaluations in a row, counted back from the last, had a higher eval loss than the one before, and
    the eval losses of that stretch (the lowest first)."""
    losses = [e["eval_loss"] for e in entries if e.get("kind") == "eval" and e.get("eval_loss") is not None]
    rises = 0
    while rises + 1 < len(losses) and losses[-1 - rises] > losses[-2 - rises]:
        rises += 1
    return rises, losses[len(losses) - rises - 1:] if rises else []


def eval_rise_advice(rises: int, losses: list[float]) -> str:
    """One line about a rising eval loss, naming the options that act on it."""
    path = " → ".join(f"{v:.4f}" for v in losses)
    return (f"the eval loss rose {rises} evaluations in a row ({path}): the model may be overfitting. "
            "load_best_model_at_end keeps the checkpoint with the lowest eval loss, early_stopping_patience stops "
            "such a run; fewer epochs or a lower learning_rate also help")


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def truncate_progress(path: Path, after_step: int) -> None:
    """Drop lines beyond ``after_step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    kept = [json.dumps(e) for e in read_progress(path) if int(e.get("step", 0)) <= after_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _loss(value: float | None) -> str:
    """A NaN/inf loss is stored as null (see _num): print it as "nan"."""
    return f"{value:.4f}" if value is not None else "nan"


def _is_nonfinite(value: Any) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def nonfinite_parameters(model) -> list[tuple[str, int, int]]:
    """Trainable parameters holding NaN or inf: (name, how many values, of how many), in model order."""
    import torch

    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.numel()]
    if not params:
        return []
    with torch.no_grad():
        flags = torch.stack([torch.isfinite(p).all().cpu() for _, p in params]).tolist()
        return [(name, int((~torch.isfinite(p)).sum().item()), p.numel())
                for (name, p), ok in zip(params, flags) if not ok]


def divergence_advice(args, model=None) -> str:
    """What to change after a run whose loss or weights became NaN/inf."""
    lr = getattr(args, "learning_rate", None)
    tips = [f"a lower learning_rate (it is {lr:g}; try 10x smaller)" if lr else "a lower learning_rate"]
    if not getattr(args, "max_grad_norm", 1.0):
        tips.append("max_grad_norm 1.0 (gradient clipping)")
    tips.append("a longer warmup (e.g. warmup_ratio 0.1)" if getattr(args, "warmup_steps", 0)
                else "some warmup (e.g. warmup_ratio 0.1)")
    if getattr(args, "fp16", False):
        tips.append("bf16 instead of fp16 (fp16 overflows easily), or float32 (neither)")
    elif getattr(args, "bf16", False):
        tips.append("float32 instead of bf16 (turn bf16 off)")
    dtype = None
    if model is not None:
        dtype = next((str(p.dtype).replace("torch.", "") for p in model.parameters()
                      if str(p.dtype) in ("torch.float16", "torch.bfloat16")), None)
    if dtype:
        tips.append(f"the weights loaded in float32 (infer_dtype float32; they are {dtype} now)")
    return "; ".join(tips)


def _describe_params(bad: list[tuple[str, int, int]]) -> str:
    shown = ", ".join(f"{name.removeprefix('base_model.model.')} ({count} of {total} values)"
                      for name, count, total in bad[:3])
    return shown + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


class ProgressCallback(TrainerCallback):
    """Writes progress.jsonl, and stops the run when it diverges: a logged loss or grad_norm that is NaN/inf (and,
    for a grad_norm, weights that the update made NaN/inf), or NaN/inf weights about to be saved in a checkpoint.
    The training function then calls :meth:`raise_if_diverged`, which also checks the final weights."""

    def __init__(self, path: str | Path, echo: TextIO | None = sys.stdout):
        self.path = Path(path)
        self.echo = echo
        self.started = time.time()
        self.start_step = 0
        self.last_time = self.started
        self.last_tokens = 0
        self.last_logged_step = 0
        self.diverged: str | None = None  # why training was stopped: one line for the user
        self.diverged_step: int | None = None
        self.evaluating = False
        self.eval_entries: list[dict[str, Any]] = []

    def _phase(self, state, phase: str, text: str, **extra: Any) -> None:
        if state.is_world_process_zero:
            write_phase(self.path.parent, phase, text, step=state.global_step, total_steps=state.max_steps, **extra)

    # -- non-finite loss / weights (every process runs these, on identical values, so all stop together) --------
    def _stop(self, args, state, control, what: list[str], model, span: str | None = None) -> None:
        span = span or f"at step {state.global_step}"
        self.diverged = (f"training diverged {span} of {state.max_steps}: {'; '.join(what)}. The run was stopped "
                         f"and these weights were not saved. Try again with {divergence_advice(args, model)}.")
        self.diverged_step = state.global_step
        if control is not None:
            control.should_training_stop = True
            control.should_save = False  # no checkpoint of broken weights
            control.should_evaluate = False

    def _check_logs(self, args, state, control, logs: dict[str, Any], model) -> None:
        """A logged loss (averaged over processes) or grad_norm that is NaN/inf stops the run."""
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        bad_loss, bad_grad = _is_nonfinite(loss), _is_nonfinite(grad_norm)
        if self.diverged or not (bad_loss or bad_grad):
            return
        # A non-finite gradient norm alone can be harmless: fp16 loss scaling skips that update, and clipping
        # zeroes gradients whose norm merely overflowed. The weights tell whether the update did damage.
        bad_params = nonfinite_parameters(model) if model is not None else []
        if not bad_loss and not bad_params:
            if self.echo is not None and state.is_world_process_zero:
                self.echo.write(f"[train] warning: step {state.global_step}: grad_norm is {float(grad_norm)}, but the "
                                "weights are still finite (the update was skipped or clipped); training continues\n")
                self.echo.flush()
            return
        what = []
        if bad_loss:
            what.append(f"the training loss became {float(loss)}")
        if bad_grad:
            what.append(f"the gradient norm became {float(grad_norm)}")
        if bad_params:
            what.append(f"trainable weights hold NaN/inf: {_describe_params(bad_params)}")
        span = None if state.global_step - self.last_logged_step <= 1 else \
            f"between steps {self.last_logged_step + 1} and {state.global_step}"
        self._stop(args, state, control, what, model, span)

    def _check_before_save(self, args, state, control, model) -> None:
        if self.diverged:
            control.should_save = control.should_evaluate = False
            return
        if control.should_save and model is not None:
            bad = nonfinite_parameters(model)
            if bad:
                self._stop(args, state, control, [f"trainable weights hold NaN/inf: {_describe_params(bad)}"], model,
                           f"by step {state.global_step}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._check_before_save(args, state, control, model)
        if state.global_step == self.start_step + 1:  # the sign of life before the first progress line
            seconds = time.time() - self.started
            self._phase(state, "training", f"step {state.global_step} of {state.max_steps} took {seconds:.1f} s",
                        first_step_seconds=round(seconds, 3))

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self.evaluating:
            self.evaluating = True
            self._phase(state, "evaluating", f"evaluating at step {state.global_step} of {state.max_steps}")

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluating = False
        self._phase(state, "training", f"training: step {state.global_step} of {state.max_steps}")

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_before_save(args, state, control, model)

    def raise_if_diverged(self, trainer) -> None:
        """After ``trainer.train()``, before the final save: raise WorkbenchError (the process then exits non-zero
        and the job is shown as failed, not finished) if the run was stopped as diverged, or if any trainable
        weight is NaN/inf now."""
        if self.diverged:
            raise WorkbenchError(self.diverged)
        bad = nonfinite_parameters(trainer.model)
        if bad:
            raise WorkbenchError(
                f"training ended at step {trainer.state.global_step} with NaN/inf in its trainable weights: "
                f"{_describe_params(bad)}. The result was not saved. Try again with "
                f"{divergence_advice(trainer.args, trainer.model)}.")

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.time()
        self.start_step = self.last_logged_step = state.global_step  # > 0 when resumed
        self.last_tokens = state.num_input_tokens_seen
        self._phase(state, "training", f"step {state.global_step + 1} of {state.max_steps} running")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        is_eval = any(k.startswith("eval_") for k in logs)
        if not is_eval and "loss" in logs:
            self._check_logs(args, state, control, logs, kwargs.get("model"))
            self.last_logged_step = state.global_step
        if not state.is_world_process_zero:
            return
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
                # transformers' logging_nan_inf_filter logs a NaN loss right after a log as 0.0: not a real loss.
                loss=None if self.diverged_step == step and logs.get("loss") == 0.0 else _num(logs.get("loss")),
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
        append_progress(self.path, entry)
        if self.echo is not None:
            self.echo.write(self._line(entry) + "\n")
            self.echo.flush()
        if is_eval:
            self.eval_entries.append(entry)
            rises, losses = eval_loss_rises(self.eval_entries)
            if rises == EVAL_RISES_WARN and self.echo is not None:  # said once, when it first reaches the count
                self.echo.write(f"[eval] warning: {eval_rise_advice(rises, losses)}\n")
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
        parts.append(f"eta {format_duration(e['eta'], missing='?')}")
        return "[train] " + "  ".join(parts)
