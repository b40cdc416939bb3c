"""Finished and running training runs, read from the runs directory (no UI here).

A finished training run is a directory with ``workbench_run.json`` and ``adapter_config.json``
(written by the trainer at the end); :func:`list_adapters` is what the Chat, Evaluate and Export
pickers call, so a run appears there as soon as it has finished. :func:`list_runs` summarises
every run for the runs table (jobs started from the UI and runs trained on the command line
alike), :func:`config_diff` compares the configs of several runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench import jobs
from workbench.paths import runs_dir

RUN_FILE = "workbench_run.json"  # written by workbench.train.outputs at the end of training
ADAPTER_FILE = "adapter_config.json"
# Keys that differ between any two runs by construction; a diff of them says nothing.
DIFF_SKIP = frozenset({"output_dir", "run_name"})


def _root(root: Path | str | None) -> Path:
    return Path(root).expanduser() if root is not None else runs_dir()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
        record = path / RUN_FILE
        if not record.is_file() or not (path / ADAPTER_FILE).is_file():
            continue
        info = _read_json(record) or {}
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
    for line in reversed(jobs._last_lines(path / jobs.PROGRESS_FILE, 20)):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind", "train") == "train" and entry.get("loss") is not None:
            return entry
    return None


def _config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((path / jobs.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def summarize(path: Path) -> RunSummary | None:
    """A run directory → its summary; None for a directory that is neither a job nor a training run."""
    path = Path(path)
    status = jobs.Job(path).status() if (path / jobs.STATUS_FILE).is_file() else None
    record = _read_json(path / RUN_FILE)
    if status is None and record is None and not (path / jobs.PROGRESS_FILE).is_file():
        return None
    config = _config(path)
    record = record or {}
    if status is not None:
        kind, state = str(status.get("kind", "job")), str(status.get("state"))
        started, ended, error = status.get("started"), status.get("ended"), status.get("error")
    else:  # trained on the command line straight into the runs directory
        kind, state, error = "train", "finished" if record else "incomplete", None
        ended = (path / RUN_FILE).stat().st_mtime if record else None
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
            created = (jobs.Job(path).raw_status().get("created") if (path / jobs.STATUS_FILE).is_file()
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
    configs = [full_config(_config(p)) for p in paths]
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


# ---- planning and starting a training run (what the Train tab's Preview and Start do) -------------------

# Keys a config.yaml always states, even at their defaults, so the file reads as a recipe.
ESSENTIAL_KEYS = ("model_name_or_path", "template", "stage", "finetuning_type", "dataset", "output_dir")


def train_option_classes() -> tuple[type, ...]:
    from workbench.config.data import DataArgs
    from workbench.config.model import ModelArgs
    from workbench.config.train import FinetuningArgs, LaunchArgs, TrainArgs

    return (ModelArgs, FinetuningArgs, DataArgs, TrainArgs, LaunchArgs)


def option_defaults() -> dict[str, Any]:
    """Every training option's default (the first class that declares a name wins: seed, ...)."""
    from dataclasses import MISSING

    from workbench.config.base import option_fields

    out: dict[str, Any] = {}
    for cls in train_option_classes():
        for name, f in option_fields(cls).items():
            if name not in out:
                out[name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out


def compact_config(values: dict[str, Any]) -> dict[str, Any]:
    """Drop options left at their defaults (except the essentials), keeping the given order."""
    defaults = option_defaults()
    return {k: v for k, v in values.items()
            if k in ESSENTIAL_KEYS or k not in defaults or v != defaults[k]}


def default_run_name(stage: str = "sft", finetuning_type: str = "lora") -> str:
    return f"{stage}-{finetuning_type}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class TrainPlan:
    """What Start will run: the run directory, config.yaml's contents and the exact argv."""

    name: str
    path: Path
    config: dict[str, Any]
    argv: list[str]
    reuse: bool
    warnings: list[str]
    train_config: Any  # workbench.config.train.TrainConfig
    launch: Any        # workbench.config.train.LaunchArgs

    @property
    def yaml(self) -> str:
        from workbench.config.base import dump_yaml

        return dump_yaml(self.config)

    @property
    def command(self) -> str:
        import shlex

        return shlex.join(self.argv)


def plan_training(values: dict[str, Any], name: str, root: Path | str | None = None) -> TrainPlan:
    """Validate a flat option mapping (YAML keys) for run ``name``; nothing is started or written.

    Raises OptionError naming the option, or WorkbenchError for the run name / run directory.
    """
    import sys

    from workbench.config.base import OptionError, WorkbenchError, option_fields
    from workbench.config.train import LaunchArgs, parse_train_config
    from workbench.paths import run_path
    from workbench.train.launch import child_flags
    from workbench.train.outputs import resolve_resume
    from workbench.train.run import check_datasets_fit_stage

    path = run_path((name or "").strip(), _root(root))
    values = {k: v for k, v in values.items() if k != "output_dir"}
    launch_keys = set(option_fields(LaunchArgs))
    launch_values = {k: values.pop(k) for k in list(values) if k in launch_keys}
    values["output_dir"] = str(path)
    cfg = parse_train_config(values)
    launch = LaunchArgs(**launch_values)
    check_datasets_fit_stage(cfg.data, cfg.finetuning.stage)
    resume = cfg.train.resume_from_checkpoint
    existing = path.exists() and any(path.iterdir())
    if existing and not resume:
        raise WorkbenchError(f"run {path.name!r} already exists in {path.parent}: choose another run name, or set "
                             "resume_from_checkpoint to continue it")
    if resume:
        if not existing:
            raise OptionError("resume_from_checkpoint", f"run {path.name!r} does not exist yet; give the name of the "
                                                        "run to continue as the run name")
        resolve_resume(resume, path)
    argv = [sys.executable, "-m", "workbench", "train", str(path / jobs.CONFIG_FILE)]
    launch_flags = {k: v for k, v in launch.to_dict(non_default_only=True).items() if k != "launch"}
    if launch.launch or launch.num_processes > 1 or launch.num_machines > 1:
        argv += ["--launch", *child_flags(launch_flags)]
    return TrainPlan(name=path.name, path=path, config=compact_config(values), argv=argv, reuse=bool(resume),
                     warnings=list(cfg.warnings) + template_warnings(cfg), train_config=cfg, launch=launch)


def template_warnings(cfg) -> list[str]:
    """Refuse a template whose stop tokens the model's tokenizer cannot encode, before a job starts; warn about a
    format the model was not trained on. Skipped (training checks again) when the tokenizer is not here yet."""
    if cfg.finetuning.stage == "pt":
        return []
    from workbench.data.inspect import tokenizer_for
    from workbench.data.templates import resolve_template

    try:
        tokenizer = tokenizer_for(cfg.model.model_name_or_path)
    except Exception:
        return []
    template = resolve_template(cfg.data.template, cfg.model.model_name_or_path)
    template.check_tokenizer(tokenizer)
    return [f"template {template.name}: {w}" for w in template.tokenizer_warnings(tokenizer)]


def start_training(plan: TrainPlan, root: Path | str | None = None) -> jobs.Job:
    """Start (or queue) the planned run as a job of kind "train"."""
    return jobs.start_job("train", plan.name, plan.argv, plan.config, reuse=plan.reuse,
                          root=root if root is not None else plan.path.parent)


def delete_run(path: Path | str, force: bool = False) -> None:
    """Remove a run directory: a job that has ended, or a finished command-line run.

    A run that holds an adapter, a model or checkpoints (a finished one always does) is deleted only
    with ``force``: the Train tab passes it after its confirmation.
    """
    import shutil

    from workbench.config.base import WorkbenchError

    path = Path(path)
    if (path / jobs.STATUS_FILE).is_file():
        jobs.Job(path).delete(force=force)
        return
    if not (path / RUN_FILE).is_file():
        raise WorkbenchError(f"{path} is not a finished run (no {RUN_FILE}); if it is still training, stop it first")
    held = jobs.weight_files(path)
    if held and not force:
        raise WorkbenchError(f"{path} holds an adapter or model ({', '.join(held[:5])}); confirm to delete it")
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise WorkbenchError(f"cannot delete {path}: {exc.strerror or exc}") from None


def check_train_memory(plan: TrainPlan, loaded_chat_model: Any = None) -> None:
    """Refuse a run that will not fit in memory next to what is loaded (see workbench.resources)."""
    from workbench import resources
    from workbench.models.loader import pick_device, resolve_model_path

    cfg = plan.train_config
    model_path = Path(resolve_model_path(cfg.model.model_name_or_path))
    shape = resources.model_shape(model_path) if model_path.is_dir() else None
    if shape is None:
        return  # a hub model not downloaded yet: its size is unknown here
    device = pick_device(cfg.model.device)
    half = cfg.model.infer_dtype in ("bfloat16", "float16") or (device.startswith("cuda") and
                                                                cfg.model.infer_dtype == "auto")
    needed = resources.estimate_train_memory(
        shape, finetuning_type=cfg.finetuning.finetuning_type, quantization_bit=cfg.model.quantization_bit,
        weight_bytes=2 if half else 4, batch_size=cfg.train.per_device_train_batch_size,
        cutoff_len=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    if device == "cpu":
        needed *= plan.launch.num_processes  # data-parallel ranks share the machine's RAM
    chat_bytes = resources.loaded_model_bytes(loaded_chat_model.model) if loaded_chat_model is not None else 0
    resources.check_train_fits(needed, device, chat_model_bytes=chat_bytes,
                               chat_model=getattr(loaded_chat_model, "label", "") if loaded_chat_model else "")


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
