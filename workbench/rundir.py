"""The run directory: the files a training, evaluation or export run writes, and the one reader or writer of each.

Everything that looks into a run directory (the jobs store, the runs table, the adapter pickers, chat, eval,
export) names these files through this module, so the contract lives in one place::

    config.yaml          what was asked (a training run's options; a job's request)
    command.txt          the exact argv that ran (jobs)
    job.json             the job's kind and argv (jobs)
    status.json          queued / running / finished / failed / aborted (written by the job supervisor)
    log.txt              the child's stdout and stderr
    progress.jsonl       one JSON object per step (train: loss, lr, tokens/s; eval: rows; export: steps)
    workbench_run.json   the record of a finished training run (base model, template, stage, ...); also written
                         into a merged-adapter directory so adapter pickers list it
    workbench_export.json  the record of a merged model (written next to its weights)
    phase.json           what a training run is doing right now (tokenising, loading the model, step 1 and its time,
                         evaluating, saving): the sign of life before the first progress line
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
SPEC_FILE = "job.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.txt"
PROGRESS_FILE = "progress.jsonl"
RUN_RECORD = "workbench_run.json"
EXPORT_RECORD = "workbench_export.json"
ADAPTER_CONFIG = "adapter_config.json"
PHASE_FILE = "phase.json"


def timestamped(prefix: str) -> str:
    """``prefix-YYYYmmdd-HHMMSS``: the default name of a new run (``sft-lora-…``, ``eval-…``)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def default_run_name(stage: str = "sft", finetuning_type: str = "lora") -> str:
    """The name a training run gets when none is given (the Train tab's default and ``train`` without output_dir)."""
    return timestamped(f"{stage}-{finetuning_type}")


def read_json(path: Path | str, retries: int = 0) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is missing, unreadable or not an object.
    ``retries``: read again this many times (50 ms apart) when a writer is caught mid-way through an overwrite."""
    for attempt in range(retries + 1):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            if attempt == retries:
                return None
            time.sleep(0.05)
            continue
        return data if isinstance(data, dict) else None
    return None


def read_run_record(directory: Path | str) -> dict[str, Any] | None:
    """``workbench_run.json`` of a training run or merged adapter (None when absent)."""
    return read_json(Path(directory).expanduser() / RUN_RECORD)


def read_export_record(directory: Path | str) -> dict[str, Any] | None:
    """``workbench_export.json`` of a merged model (None when absent)."""
    return read_json(Path(directory).expanduser() / EXPORT_RECORD)


def last_lines(path: Path, n: int, chunk: int = 65536) -> list[str]:
    """The last ``n`` lines of a text file without reading all of it; carriage-return progress
    bars keep only their final state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            data = b""
            pos = size
            while pos > 0 and data.count(b"\n") <= n:
                step = min(chunk, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")  # not splitlines(): it splits at \r too
    if lines and lines[-1] == "":
        lines.pop()
    if pos > 0 and lines:
        lines = lines[1:]  # the first line was cut by the chunk boundary
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]
    return lines[-n:] if n > 0 else []


def append_progress(path: Path | str, entry: dict[str, Any]) -> None:
    """Append one progress line. A single write of a whole line, so a reader never sees half of one
    unless the process dies mid-write (readers skip a line that does not parse)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def read_progress(path: Path | str) -> list[dict[str, Any]]:
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


def format_duration(seconds: float | None, missing: str = "") -> str:
    """Elapsed time or an ETA as a person reads it: ``4m07s``, ``1h02m`` (seconds are noise past an hour)."""
    if seconds is None:
        return missing
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def write_phase(directory: Path | str, phase: str, text: str, **extra: Any) -> None:
    """Replace ``phase.json`` with what the run does now (``phase``: a short key such as "tokenising",
    "loading", "training", "evaluating", "saving"; ``text``: one line for a person). Written whole and renamed into
    place, so a reader sees the old or the new phase, never half of one. Kept out of progress.jsonl, whose lines are
    all metric lines of one shape."""
    directory = Path(directory)
    entry = {"phase": phase, "text": text, "time": time.time(), **extra}
    tmp = directory / f".{PHASE_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(tmp, directory / PHASE_FILE)
    except OSError:  # a sign of life is never worth failing a run over
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def read_phase(directory: Path | str) -> dict[str, Any] | None:
    """``phase.json`` of a run (None when the run has not written one)."""
    return read_json(Path(directory) / PHASE_FILE)
