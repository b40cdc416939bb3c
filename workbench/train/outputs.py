"""The output directory: refuse to mix two runs, find checkpoints, write the run's record files."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workbench.config.base import OptionError, WorkbenchError, dump_yaml
from workbench.paths import run_path
from workbench.rundir import PROGRESS_FILE, RUN_RECORD, default_run_name

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a finished or interrupted run leaves behind; a Job's own files (config.yaml, command.txt,
# status.json, log.txt) may already be there and are not a sign of another run.
RUN_ARTIFACTS = (
    RUN_RECORD, "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "all_results.json", "train_results.json",
    "eval_results.json", "trainer_state.json", "loss.png", "training_args.bin",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "config.json")


def default_output_dir(stage: str, finetuning_type: str) -> Path:
    return run_path(default_run_name(stage, finetuning_type))


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N directories, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def holds_run(output_dir: Path) -> list[str]:
    """What in output_dir belongs to an earlier run (empty: the directory is free to use)."""
    if not output_dir.is_dir():
        return []
    found = [name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    found += [p.name for p in checkpoints(output_dir)]
    progress = output_dir / PROGRESS_FILE
    if progress.is_file() and progress.stat().st_size > 0:
        found.append(PROGRESS_FILE)
    if (output_dir / "runs").is_dir():
        found.append("runs/")
    return found


def resolve_resume(value: str | None, output_dir: Path) -> Path | None:
    """``true`` → the latest checkpoint in output_dir; a path → that checkpoint (checked)."""
    if value is None:
        return None
    if value == "true":
        # trainer_state.json is written last: a checkpoint without it was cut short (aborted mid-save).
        found = [p for p in checkpoints(output_dir) if (p / "trainer_state.json").is_file()]
        if not found:
            raise OptionError("resume_from_checkpoint", f"true, but {output_dir} holds no checkpoint-* directory "
                                                        "with a trainer_state.json (a complete checkpoint)")
        return found[-1]
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists() and (output_dir / value).exists():
        path = output_dir / value
    if not path.is_dir():
        raise OptionError("resume_from_checkpoint", f"{value}: no such checkpoint directory")
    if not (path / "trainer_state.json").is_file():
        raise OptionError("resume_from_checkpoint",
                          f"{path} is not a training checkpoint (trainer_state.json is missing)")
    return path.resolve()


def prepare_output_dir(output_dir: Path, *, overwrite: bool, resuming: bool) -> None:
    """Refuse a directory with another run in it unless told to overwrite (then clear only our artifacts)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OptionError("output_dir", f"{output_dir} exists and is not a directory")
    existed = output_dir.is_dir()
    if existed:  # before anything is removed from it, or any model loads
        check_writable(output_dir)
    previous = holds_run(output_dir)
    if previous and not resuming:
        if not overwrite:
            shown = ", ".join(previous[:6]) + (" ..." if len(previous) > 6 else "")
            raise OptionError(
                "output_dir",
                f"{output_dir} already holds a run ({shown}); choose another output_dir, set overwrite_output_dir "
                "to start over there, or resume_from_checkpoint to continue it",
            )
        for name in previous:
            path = output_dir / name.rstrip("/")
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError("output_dir", f"cannot create {output_dir} ({exc.strerror})") from None
    if not existed:
        check_writable(output_dir)


def check_writable(output_dir: Path) -> None:
    """Refuse, before any model loads, an output_dir (or a progress.jsonl in it) that cannot be written.

    ``os.access`` alone is not enough (it can be wrong on network filesystems, with ACLs or for an immutable folder),
    so a temporary file is also created and removed."""
    unwritable = "is not writable"
    advice = "choose another output_dir or make it writable"
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise OptionError("output_dir", f"{output_dir} {unwritable} ({_access_reason(output_dir)}); {advice}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".workbench-write-test-", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OptionError("output_dir", f"{output_dir} {unwritable} ({exc.strerror or exc}); {advice}") from None
    progress = output_dir / PROGRESS_FILE
    if progress.exists():  # a resumed run rewrites it
        try:
            with open(progress, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise OptionError("output_dir", f"{progress} {unwritable} ({exc.strerror or exc}); {advice}") from None


def _access_reason(path: Path) -> str:
    """Why os.access refused: a read-only filesystem or the folder's permissions."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    except (OSError, AttributeError):
        pass
    return os.strerror(errno.EACCES)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_config(path: Path, values: dict[str, Any]) -> None:
    path.write_text(dump_yaml(values), encoding="utf-8")


def read_run(output_dir: str | Path) -> dict[str, Any]:
    path = Path(output_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkbenchError(f"{output_dir} is not a finished training run ({RUN_RECORD} is missing)") from None
    except ValueError as exc:
        raise WorkbenchError(f"{path}: not valid JSON ({exc})") from None
