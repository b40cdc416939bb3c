"""``dataset_info.json``: LLaMA-Factory's dataset registry, read unchanged and written back safely.

Each entry names one source (``file_name``, ``hf_hub_url``, ``ms_hub_url``, ``om_hub_url`` or
``script_url``), its ``formatting`` (alpaca, sharegpt, openai), whether it is ``ranking`` (preference
pairs), and maps the schema's columns and tags to the file's names. Unlike LLaMA-Factory, a partial
``columns`` map keeps the defaults for the columns it leaves out; a default column the file does not
have is simply not used, while a column named explicitly must exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError
from workbench.data.files import FILE_TYPES
from workbench.data.formats import detect_spec
from workbench.data.spec import DatasetSpec, env_true, spec_from_entry

INFO_FILE = "dataset_info.json"
BACKUP_FILE = INFO_FILE + ".bak"  # the registry as it was before the last save (only when there was one)


def info_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir).expanduser() / INFO_FILE


def read_info(dataset_dir: str | Path) -> dict[str, Any]:
    """The raw JSON of ``dataset_dir/dataset_info.json`` ({} when the file does not exist)."""
    path = info_path(dataset_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise WorkbenchError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected an object of dataset name → entry, got {type(data).__name__}")
    return data


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetSpec]:
    """Every entry of ``dataset_dir/dataset_info.json`` as a :class:`DatasetSpec`."""
    dataset_dir = Path(dataset_dir).expanduser()
    path = info_path(dataset_dir)
    return {name: spec_from_entry(name, entry, dataset_dir, path) for name, entry in read_info(dataset_dir).items()}


def dataset_names(dataset_dir: str | Path) -> list[str]:
    """Names for pickers; an unreadable registry gives an empty list (the Data tab shows the error)."""
    try:
        return list(read_info(dataset_dir))
    except WorkbenchError:
        return []


def get_spec(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """A registered dataset by name, or a data file given by path (its format detected)."""
    dataset_dir = Path(dataset_dir).expanduser()
    info = read_info(dataset_dir)
    if name in info:
        return spec_from_entry(name, info[name], dataset_dir, info_path(dataset_dir))
    candidate = Path(name).expanduser()
    if candidate.suffix.lower() in FILE_TYPES and candidate.exists():
        return detect_spec(candidate)
    where = info_path(dataset_dir)
    if not where.is_file():
        raise WorkbenchError(f"dataset {name!r}: {where} does not exist (and {name!r} is not a data file)")
    close = [n for n in info if n.lower().replace("-", "_") == name.lower().replace("-", "_")]
    hint = f"; did you mean {close[0]!r}?" if close else f"; registered: {', '.join(list(info)[:20])}" + (
        " …" if len(info) > 20 else "")
    raise WorkbenchError(f"dataset {name!r} is not in {where}{hint}")


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


STRICT_SHA1_ENV = "WORKBENCH_STRICT_SHA1"


def check_sha1(spec: DatasetSpec, notes: list[str] | None = None) -> None:
    """A ``file_sha1`` mismatch is a warning, as in LLaMA-Factory; an error with WORKBENCH_STRICT_SHA1=1."""
    if spec.load_from != "file" or not spec.file_sha1 or not spec.path.is_file():
        return
    actual = file_sha1(spec.path)
    if actual != spec.file_sha1.lower():
        message = (f"dataset {spec.name!r}: file_sha1 mismatch for {spec.path}: dataset_info.json says "
                   f"{spec.file_sha1}, the file has {actual} (the file changed; update file_sha1 or restore the file)")
        if env_true(STRICT_SHA1_ENV) or notes is None:
            raise WorkbenchError(message)
        notes.append(message + f"; {STRICT_SHA1_ENV}=1 makes this an error")


def save_entry(dataset_dir: str | Path, name: str, entry: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Add (or with ``overwrite`` replace) one entry, keeping every other entry and their order.

    The old file, when there is one, is copied to ``dataset_info.json.bak`` first and the new one is written to
    a temporary file and renamed into place, so a crash never leaves a half-written registry.
    """
    name = (name or "").strip()
    if not name:
        raise WorkbenchError("a dataset name is required")
    if any(c in name for c in ",\n\r\t") or name != name.strip():
        raise WorkbenchError(f"dataset name {name!r} may not contain commas or line breaks")
    dataset_dir = Path(dataset_dir).expanduser()
    spec_from_entry(name, entry, dataset_dir)  # validate before touching anything
    path = info_path(dataset_dir)
    info = read_info(dataset_dir)
    if name in info and not overwrite:
        raise WorkbenchError(f"{path}: a dataset named {name!r} already exists; choose another name "
                             "(or replace it explicitly)")
    info[name] = entry
    dataset_dir.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        shutil.copy2(path, path.with_name(BACKUP_FILE))
    atomic_write_text(path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; give it the mode a normally created file would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def hub_cached(spec: DatasetSpec) -> bool:
    """Whether a hub dataset seems to be in the local Hugging Face caches (checked without network)."""
    if spec.load_from != "hf_hub":
        return False
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                       "huggingface") / "hub")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or hub.parent / "datasets")
    repo = spec.source.replace("/", "--")
    return (hub / f"datasets--{repo}").is_dir() or any(datasets_cache.glob(spec.source.replace("/", "___") + "*"))


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def needs_download_message(spec: DatasetSpec, offline: bool = True) -> str:
    others = "".join(f"; also listed: {k} {v}" for k, v in spec.alternatives.items())
    if spec.load_from == "hf_hub":
        why = "this machine is offline" if offline else "checking does not download"
        return (f"dataset {spec.name!r} is on the Hugging Face hub ({spec.source}) and needs download: it is not in "
                f"the local cache and {why}; train with network access once, or download it and register the "
                f"local files{others}")
    if spec.load_from in ("ms_hub", "om_hub"):
        hub = "ModelScope" if spec.load_from == "ms_hub" else "Modelers"
        return (f"dataset {spec.name!r} is only on {hub} ({spec.source}) and needs download; Workbench reads local "
                f"files and the Hugging Face hub: download it and register the local files{others}")
    return f"dataset {spec.name!r}: {spec.where()} is not available"

