"""Finished and running training runs, read from the runs directory (no UI here).

A finished training run is a directory with ``workbench_run.json`` and ``adapter_config.json``
(written by the trainer at the end); :func:`list_adapters` is what the Chat, Evaluate and Export
pickers call, so a run appears there as soon as it has finished. :func:`list_runs` summarises
every run for the runs table (jobs started from the UI and runs trained on the command line
alike), :func:`config_diff` compares the configs of several runs, :func:`read_config` is what "load this
run's config into the form" reads, and :func:`comparable_pace` finds the measured speed of an earlier run like a
planned one (the Train tab's time estimate).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench.jobs import store as jobs
from workbench.paths import runs_dir
from workbench.rundir import ADAPTER_CONFIG, CONFIG_FILE, PROGRESS_FILE, RUN_RECORD, STATUS_FILE, last_lines, read_json

# Keys that differ between any two runs by construction; a diff of them says nothing.
DIFF_SKIP = frozenset({"output_dir", "run_name"})


def _root(root: Path | str | None) -> Path:
    return Path(root).expanduser() if root is not None else runs_dir()


def list_adapters(root: Path | str | None = None) -> list[tuple[str, str, str]]:
    """Finished LoRA runs as (name, adapter directory, base model as given), newest first; reward-model
    (stage rm) runs are left out."""
    base = _root(root)
    found = []
    try:
        dirs = [p for p in base.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    for path in dirs:
        record = path / RUN_RECORD
        if not record.is_file() or not (path / ADAPTER_CONFIG).is_file():
            continue
        info = read_json(record) or {}
        if info.get("stage") == "rm":  # a reward model: a sequence-classification adapter, not a chat model's
            continue
        found.append((record.stat().st_mtime, path.name, str(path), str(info.get("base_model") or "")))
    return [(name, where, model) for _, name, where, model in sorted(found, reverse=True)]


# ---- run summaries ---------------------------------------------------------------------------------

@dataclass
class RunSummary:
    name: str
    path: str
    kind: str
    state: str               # queued / running / finished / failed / aborted (or "incomplete" for a CLI run)
    stage: str = ""
    model: str = ""
    dataset: str = ""
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None  # the last logged training loss
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    queue_position: int | None = None

    @property
    def progress(self) -> float | None:
        if self.state == "finished":
            return 1.0
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(progress=self.progress, duration=self.duration)
        return out


def last_progress(path: Path) -> dict[str, Any] | None:
    """The last training line of a progress.jsonl (read from the end of the file)."""
    for line in reversed(last_lines(path / PROGRESS_FILE, 20)):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind", "train") == "train" and entry.get("loss") is not None:
            return entry
    return None


def read_config(path: Path | str) -> dict[str, Any]:
    """A run's config.yaml as a mapping ({} when it is missing or not a mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def summarize(path: Path) -> RunSummary | None:
    """A run directory → its summary; None for a directory that is neither a job nor a training run."""
    path = Path(path)
    status = jobs.Job(path).status() if (path / STATUS_FILE).is_file() else None
    record = read_json(path / RUN_RECORD)
    if status is None and record is None and not (path / PROGRESS_FILE).is_file():
        return None
    config = read_config(path)
    record = record or {}
    if status is not None:
        kind, state = str(status.get("kind", "job")), str(status.get("state"))
        started, ended, error = status.get("started"), status.get("ended"), status.get("error")
    else:  # trained on the command line straight into the runs directory
        kind, state, error = "train", "finished" if record else "incomplete", None
        ended = (path / RUN_RECORD).stat().st_mtime if record else None
        started = ended - float(record["seconds"]) if ended and record.get("seconds") else None
    last = last_progress(path)
    return RunSummary(
        name=path.name, path=str(path), kind=kind, state=state,
        stage=str(record.get("stage") or config.get("stage") or ("sft" if kind == "train" and config else "")),
        model=str(record.get("base_model") or config.get("model_name_or_path") or ""),
        dataset=str(record.get("dataset") or config.get("dataset") or ""),
        step=last.get("step") if last else None, total_steps=last.get("total_steps") if last else None,
        loss=last.get("loss") if last else record.get("train_loss"),
        started=started, ended=ended, error=error,
        queue_position=status.get("queue_position") if status else None,
    )


def list_runs(root: Path | str | None = None, kind: str | None = "train") -> list[RunSummary]:
    """Every run in the runs directory (of ``kind``; None for all), newest first."""
    base = _root(root)
    try:
        dirs = [p for p in base.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for path in dirs:
        summary = summarize(path)
        if summary is not None and (kind is None or summary.kind == kind):
            created = (jobs.Job(path).raw_status().get("created") if (path / STATUS_FILE).is_file()
                       else None) or summary.started or path.stat().st_mtime
            out.append((created, summary))
    return [s for _, s in sorted(out, key=lambda t: (t[0], t[1].name), reverse=True)]


def read_curve(path: Path | str) -> list[dict[str, Any]]:
    """Every complete line of a run's progress.jsonl."""
    return jobs.Job(Path(path)).read_progress(0).entries


# ---- config comparison --------------------------------------------------------------------------------

def full_config(values: dict[str, Any]) -> dict[str, Any]:
    """A run's config with every option filled in (defaults included), so runs configured with
    different subsets compare fairly; a config that no longer validates is compared as written."""
    from workbench.config.base import WorkbenchError, option_fields
    from workbench.config.train import LaunchArgs, parse_train_config

    launch_keys = set(option_fields(LaunchArgs))
    try:
        train_values = {k: v for k, v in values.items() if k not in launch_keys}
        full = parse_train_config(train_values).to_dict()
        full.update(LaunchArgs(**{k: v for k, v in values.items() if k in launch_keys}).to_dict())
        return full
    except (WorkbenchError, TypeError, ValueError):
        return dict(values)


def config_diff(paths: list[Path | str]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per option whose value differs between the runs, as
    [option, value in run 1, value in run 2, ...]; '—' where a run does not set it."""
    paths = [Path(p) for p in paths]
    configs = [full_config(read_config(p)) for p in paths]
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys]
    rows = []
    for key in keys:
        if key in DIFF_SKIP:
            continue
        values = [config.get(key, "—") for config in configs]
        if any(v != values[0] for v in values[1:]):
            rows.append([key, *["none" if v is None else v for v in values]])
    return ["option", *[p.name for p in paths]], rows


# ---- the pace of earlier runs ---------------------------------------------------------------------------------

# Options that change how fast a step of the same size runs; runs that agree on all of them are comparable.
PACE_KEYS = ("model_name_or_path", "stage", "finetuning_type", "use_dora", "quantization_bit", "infer_dtype", "bf16",
             "fp16", "gradient_checkpointing", "padding_free", "device", "num_processes", "torch_compile")


@dataclass
class Pace:
    """How fast a run trained, from its progress.jsonl."""
    run: str
    seconds_per_step: float
    tokens_per_second: float | None  # input tokens over the whole logged span (None when the trainer logs none)
    steps: int                       # the steps it was measured over


def measured_pace(path: Path | str) -> Pace | None:
    """The pace of a run over its logged training steps (evaluations and checkpoints included, as they cost time
    in a run too); None before a training line was logged. A single line is measured from the start of training;
    a resumed run's restart (elapsed counts from 0 again) is left out."""
    path = Path(path)
    train = [e for e in read_curve(path) if e.get("kind", "train") == "train" and e.get("step") is not None
             and e.get("elapsed") is not None]
    spans = list(zip(train, train[1:])) if len(train) > 1 else [({"step": 0, "elapsed": 0.0}, e) for e in train]
    steps = seconds = tokens = 0.0
    counted = True
    for before, after in spans:
        dt, dstep = after["elapsed"] - before["elapsed"], after["step"] - before["step"]
        if dt <= 0 or dstep <= 0:
            continue
        steps, seconds = steps + dstep, seconds + dt
        if after.get("tokens_per_second") is None:
            counted = False
        else:
            tokens += after["tokens_per_second"] * dt
    if steps <= 0:
        return None
    return Pace(path.name, seconds / steps, tokens / seconds if counted and tokens > 0 else None, int(steps))


def comparable_pace(values: dict[str, Any], root: Path | str | None = None, exclude: str | None = None
                    ) -> Pace | None:
    """The measured pace of the newest run (finished, aborted, or running for a while) whose :data:`PACE_KEYS`
    match the planned option mapping ``values``."""
    wanted = full_config(values)
    for summary in list_runs(root):
        if summary.name == exclude or summary.state not in ("finished", "running", "aborted"):
            continue
        config = full_config(read_config(summary.path))
        if any(config.get(k) != wanted.get(k) for k in PACE_KEYS):
            continue
        pace = measured_pace(summary.path)
        if pace is not None:
            return pace
    return None


def delete_run(path: Path | str, force: bool = False) -> None:
    """Remove a run directory: a job that has ended, or a finished command-line run.

    A run that holds an adapter, a model or checkpoints (a finished one always does) is deleted only
    with ``force``: the Train tab passes it after its confirmation.
    """
    import shutil

    from workbench.config.base import WorkbenchError

    path = Path(path)
    if (path / STATUS_FILE).is_file():
        jobs.Job(path).delete(force=force)
        return
    if not (path / RUN_RECORD).is_file():
        raise WorkbenchError(f"{path} is not a finished run (no {RUN_RECORD}); if it is still training, stop it first")
    held = jobs.weight_files(path)
    if held and not force:
        raise WorkbenchError(f"{path} holds an adapter or model ({', '.join(held[:5])}); confirm to delete it")
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise WorkbenchError(f"cannot delete {path}: {exc.strerror or exc}") from None


def run_path_for(name: str | None, root: Path | str | None = None) -> Path | None:
    """The directory of run ``name``, or None for a name that is not a valid run name."""
    from workbench.config.base import WorkbenchError
    from workbench.paths import run_path

    if not name:
        return None
    try:
        return run_path(name, _root(root))
    except WorkbenchError:
        return None
