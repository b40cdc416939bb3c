"""Where Workbench keeps things. Everything lives under ``$WORKBENCH_HOME`` (default
``~/.cache/workbench``); the converted-model cache and the runs directory can be moved separately."""

from __future__ import annotations

import os
import re
from pathlib import Path

from workbench.config.base import WorkbenchError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "workbench").expanduser()


def models_dir() -> Path:
    """Converted models (the bundled GGUF as safetensors). Shared between homes with WORKBENCH_MODELS."""
    return Path(os.environ.get("WORKBENCH_MODELS") or home() / "models").expanduser()


def runs_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_RUNS") or home() / "runs").expanduser()


def user_presets_dir() -> Path:
    return home() / "presets"


def project_data_dir() -> Path:
    return PROJECT_ROOT / "data"


def project_presets_dir() -> Path:
    return PROJECT_ROOT / "presets"


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def run_path(name: str, root: Path | None = None) -> Path:
    """The directory of run ``name``: a plain name that stays inside the runs directory."""
    if not name or not _RUN_NAME.match(name) or ".." in name:
        raise WorkbenchError(
            f"run name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..', at most 128 characters)"
        )
    root = (root or runs_dir()).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise WorkbenchError(f"run name {name!r} would leave the runs directory {root}")
    return path
