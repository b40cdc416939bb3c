"""Where Workbench keeps things. Everything lives under ``$WORKBENCH_HOME`` (default
``~/.cache/workbench``); the converted-model cache, the runs directory and the dataset folder can be moved
separately. Nothing the user makes is written into the project's own folders (``data/``, ``presets/``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
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
    """The demo sets that ship with the project (read-only to Workbench: they seed :func:`default_dataset_dir`)."""
    return PROJECT_ROOT / "data"


def default_dataset_dir() -> Path:
    """The default dataset folder: ``$WORKBENCH_DATA``, else ``data/`` in the Workbench home. It holds
    ``dataset_info.json``, the files registered there (uploads saved by the Data tab are copied in) and the
    preference data Compare and the API append to. Made on first use with the demo sets registered."""
    path = Path(os.environ.get("WORKBENCH_DATA") or home() / "data").expanduser()
    if not path.exists():
        seed_dataset_dir(path)
    return path


def seed_dataset_dir(path: Path) -> None:
    """Make ``path`` a dataset folder holding copies of the project's demo sets, registered as in the
    project's ``data/dataset_info.json``.

    Copied rather than referenced: an entry's file must lie inside its own dataset folder (docs/SECURITY.md),
    one folder stays one registry that every reader and writer agrees on, and the user may edit or delete the
    copies (about 300 KB) without touching the project. The folder is built beside ``path`` and renamed into
    place, so a process that starts at the same moment never sees half of it.
    """
    source = project_data_dir()
    try:
        info = json.loads((source / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise WorkbenchError(f"could not create the dataset folder {path}: {exc}") from None
    try:
        kept = {}
        for name, entry in (info if isinstance(info, dict) else {}).items():
            file_name = entry.get("file_name") if isinstance(entry, dict) else None
            if file_name:
                demo = source / file_name
                if Path(file_name).is_absolute() or ".." in Path(file_name).parts or not demo.is_file():
                    continue  # only the project's own files inside data/
                (staging / file_name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(demo, staging / file_name)
            kept[name] = entry
        (staging / "dataset_info.json").write_text(json.dumps(kept, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a folder the user made would not be
        try:
            os.rename(staging, path)
        except OSError:
            if not path.is_dir():  # not another process that made it first
                raise
    except OSError as exc:
        raise WorkbenchError(f"could not create the dataset folder {path}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
