"""Starting a planned training run as a Job (the Train tab's Start and ``jobs start``)."""

from __future__ import annotations

from pathlib import Path

from workbench.jobs import store as jobs
from workbench.train.plan import TrainPlan


def start_training(plan: TrainPlan, root: Path | str | None = None) -> jobs.Job:
    """Start (or queue) the planned run as a job of kind "train"."""
    return jobs.start_job("train", plan.name, plan.argv, plan.config, reuse=plan.reuse,
                          root=root if root is not None else plan.path.parent)
