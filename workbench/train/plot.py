"""loss.png from progress.jsonl: training loss (raw and smoothed) and eval loss against steps."""

from __future__ import annotations

from pathlib import Path

from workbench.train.callbacks import read_progress


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average; heavier smoothing for longer curves (as TensorBoard's slider would)."""
    if not values:
        return []
    if weight is None:
        weight = min(0.9, max(0.0, 1.0 - 10.0 / len(values))) if len(values) > 10 else 0.0
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def plot_loss(progress_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Write the plot; returns its path, or None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_progress(progress_path)
    train = [(e["step"], e["loss"]) for e in entries if e.get("kind") == "train" and e.get("loss") is not None]
    evals = [(e["step"], e["eval_loss"]) for e in entries if e.get("kind") == "eval" and e.get("eval_loss") is not None]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#8ab4f8", alpha=0.5, label="train loss")
        if len(losses) > 10:
            ax.plot(steps, smooth(list(losses)), color="#1a73e8", label="train loss (smoothed)")
    if evals:
        steps, losses = zip(*evals)
        ax.plot(steps, losses, "o-", color="#e8710a", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
