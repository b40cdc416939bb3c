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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from workbench.config.base import WorkbenchError

INFO_FILE = "dataset_info.json"
FORMATS = ("alpaca", "sharegpt", "openai")
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected",
               "kto_tag", "images", "videos", "audios")
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")
ENTRY_KEYS = (*SOURCE_KEYS, "file_sha1", "formatting", "ranking", "subset", "split", "folder", "num_samples",
              "columns", "tags")
MEDIA_KEYS = ("images", "videos", "audios")

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
               "system": "system"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
}
DEFAULT_TAGS: dict[str, dict[str, str]] = {
    "sharegpt": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"},
    "openai": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function", "system_tag": "system"},
}
DEFAULT_TAGS["alpaca"] = DEFAULT_TAGS["sharegpt"]

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow",
              ".txt": "text"}


@dataclass
class DatasetSpec:
    """One dataset: where it is, its format, and how its columns map onto the schema."""

    name: str
    load_from: str  # file | hf_hub | ms_hub | om_hub | script
    source: str  # file name relative to dataset_dir, or a hub id / script path
    dataset_dir: Path
    formatting: str = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    file_sha1: str | None = None
    explicit_columns: dict[str, str] = field(default_factory=dict)
    explicit_tags: dict[str, str] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)
    info_file: Path | None = None
    alternatives: dict[str, str] = field(default_factory=dict)  # other sources listed in the entry

    @property
    def columns(self) -> dict[str, str]:
        """The column map in effect: defaults of the format overridden by the entry's ``columns``."""
        return {**DEFAULT_COLUMNS[self.formatting], **self.explicit_columns}

    @property
    def tags(self) -> dict[str, str]:
        return {**DEFAULT_TAGS[self.formatting], **self.explicit_tags}

    @property
    def path(self) -> Path:
        # Only the folder is expanded: a file name starting with "~" stays a name inside it.
        return self.dataset_dir.expanduser() / self.source

    def where(self) -> str:
        return str(self.path) if self.load_from == "file" else f"{self.load_from.replace('_', ' ')} {self.source}"

    def to_entry(self) -> dict[str, Any]:
        """The dataset_info.json entry (only what differs from the defaults)."""
        key = {"file": "file_name", "hf_hub": "hf_hub_url", "ms_hub": "ms_hub_url", "om_hub": "om_hub_url",
               "script": "script_url"}[self.load_from]
        out: dict[str, Any] = {key: self.source}
        if self.file_sha1:
            out["file_sha1"] = self.file_sha1
        if self.formatting != "alpaca":
            out["formatting"] = self.formatting
        if self.ranking:
            out["ranking"] = True
        for k in ("subset", "folder", "num_samples"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.split != "train":
            out["split"] = self.split
        if self.explicit_columns:
            out["columns"] = dict(self.explicit_columns)
        if self.explicit_tags:
            out["tags"] = dict(self.explicit_tags)
        return out


def _where(info_file: Path | None, name: str) -> str:
    return f"{info_file}: dataset {name!r}" if info_file else f"dataset {name!r}"


def check_inside(source: str, key: str, dataset_dir: Path | str, where: str) -> None:
    """A local file or folder named by an entry stays inside the dataset folder: a relative path with no
    '..' part and no '~'. (A symlink the user put in the folder may point elsewhere: that is their choice.)"""
    parts = PurePosixPath(source).parts
    if ("\0" in source or PurePosixPath(source).is_absolute() or source.startswith("~")
            or ".." in parts):
        raise WorkbenchError(f"{where}: {key} {source!r} is outside the dataset folder {dataset_dir}; give a path "
                             "inside it (relative, without '..'), or put a link to the file in the folder")


def spec_from_entry(name: str, entry: Any, dataset_dir: Path, info_file: Path | None = None) -> DatasetSpec:
    """Validate one dataset_info.json entry; errors name the file, the dataset and the key."""
    where = _where(info_file, name)
    if not isinstance(entry, dict):
        raise WorkbenchError(f"{where}: expected an object, got {type(entry).__name__}")
    sources = {k: entry[k] for k in SOURCE_KEYS if entry.get(k)}
    # LLaMA-Factory's precedence: a hub source first (ModelScope / Modelers when chosen with USE_MODELSCOPE_HUB /
    # USE_OPENMIND_HUB, or when no Hugging Face URL is given), then script_url, then the local file. Offline, a hub
    # source that is not cached falls back to file_name when the entry has one (loader.spec_rows).
    order = [("hf_hub_url", "hf_hub"), ("script_url", "script"), ("file_name", "file")]
    for key, kind, flag in (("om_hub_url", "om_hub", "USE_OPENMIND_HUB"), ("ms_hub_url", "ms_hub", "USE_MODELSCOPE_HUB")):
        if key in sources and (_env_true(flag) or "hf_hub_url" not in sources):
            order.insert(0, (key, kind))
        else:
            order.insert(1, (key, kind))
    for key, kind in order:
        if key in sources:
            load_from, source = kind, sources[key]
            break
    else:
        raise WorkbenchError(f"{where}: no source; give one of {', '.join(SOURCE_KEYS)}")
    for k in ("file_name", "script_url"):
        if k in sources and not isinstance(sources[k], str):
            raise WorkbenchError(f"{where}: {k} must be a string, got {type(sources[k]).__name__}")
    if not isinstance(source, str):
        raise WorkbenchError(f"{where}: {key} must be a string, got {type(source).__name__}")
    for k in ("file_name", "script_url"):  # script_url is read as a local folder when it exists (loader.spec_rows)
        if k in sources:
            check_inside(sources[k], k, dataset_dir, where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise WorkbenchError(f"{where}: unknown formatting {formatting!r}; choose from {', '.join(FORMATS)}")
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        raise WorkbenchError(f"{where}: columns must be an object mapping schema names to column names")
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise WorkbenchError(f"{where}: unknown column key(s) {', '.join(map(repr, unknown))} in columns; "
                             f"known keys: {', '.join(COLUMN_KEYS)}")
    for k, v in columns.items():
        if not isinstance(v, str) or not v:
            raise WorkbenchError(f"{where}: columns.{k} must be a column name (text), got {v!r}")
    tags = entry.get("tags") or {}
    if not isinstance(tags, dict):
        raise WorkbenchError(f"{where}: tags must be an object")
    unknown = sorted(set(tags) - set(TAG_KEYS))
    if unknown:
        raise WorkbenchError(f"{where}: unknown tag key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys: {', '.join(TAG_KEYS)}")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise WorkbenchError(f"{where}: ranking must be true or false, got {ranking!r}")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise WorkbenchError(f"{where}: num_samples must be a positive whole number, got {num_samples!r}")
    return DatasetSpec(
        name=name, load_from=load_from, source=source, dataset_dir=Path(dataset_dir), formatting=formatting,
        ranking=ranking, subset=entry.get("subset"), split=entry.get("split") or "train",
        folder=entry.get("folder"), num_samples=num_samples, file_sha1=entry.get("file_sha1"),
        explicit_columns=dict(columns), explicit_tags=dict(tags), entry=dict(entry), info_file=info_file,
        alternatives={k: v for k, v in sources.items() if v != source},
    )


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
        from workbench.data.formats import detect_spec

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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y")


def check_sha1(spec: DatasetSpec, notes: list[str] | None = None) -> None:
    """A ``file_sha1`` mismatch is a warning, as in LLaMA-Factory; an error with WORKBENCH_STRICT_SHA1=1."""
    if spec.load_from != "file" or not spec.file_sha1 or not spec.path.is_file():
        return
    actual = file_sha1(spec.path)
    if actual != spec.file_sha1.lower():
        message = (f"dataset {spec.name!r}: file_sha1 mismatch for {spec.path}: dataset_info.json says "
                   f"{spec.file_sha1}, the file has {actual} (the file changed; update file_sha1 or restore the file)")
        if _env_true(STRICT_SHA1_ENV) or notes is None:
            raise WorkbenchError(message)
        notes.append(message + f"; {STRICT_SHA1_ENV}=1 makes this an error")


def save_entry(dataset_dir: str | Path, name: str, entry: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Add (or with ``overwrite`` replace) one entry, keeping every other entry and their order.

    The old file is copied to ``dataset_info.json.bak`` first and the new one is written to a temporary
    file and renamed into place, so a crash never leaves a half-written registry.
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
        shutil.copy2(path, path.with_name(INFO_FILE + ".bak"))
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

