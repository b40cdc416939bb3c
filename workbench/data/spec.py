"""One dataset as ``dataset_info.json`` describes it: the entry schema (formats, sources, columns, tags), the
:class:`DatasetSpec` an entry becomes, and :func:`spec_from_entry`, which validates an entry.

The registry file itself (reading, saving, looking up by name) is :mod:`workbench.data.registry`; this module
sits below it and below :mod:`workbench.data.formats`, which converts rows by a spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from workbench.config.base import WorkbenchError

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
        if key in sources and (env_true(flag) or "hf_hub_url" not in sources):
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


def env_true(name: str) -> bool:
    """An environment switch such as USE_MODELSCOPE_HUB=1 or WORKBENCH_STRICT_SHA1=yes."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y")
