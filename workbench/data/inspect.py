"""What the Data tab does, as plain functions: open a registered dataset or an uploaded file, guess its
format, apply a column mapping, preview it through a template, and register it."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError
from workbench.data import records as R
from workbench.data.formats import detect_format, detect_turn_tags, message_turns
from workbench.data.files import check_readable, file_type, peek_rows
from workbench.data.loader import load_spec, uses_tools
from workbench.data.registry import get_spec, read_info, save_entry
from workbench.data.spec import (COLUMN_KEYS, DEFAULT_COLUMNS, DEFAULT_TAGS, FORMATS, MEDIA_KEYS, TAG_KEYS, DatasetSpec,
                                 spec_from_entry)
from workbench.data.stats import LengthStats, marked_pieces, token_lengths
from workbench.data.templates import Template
from workbench.models.loader import resolve_model_path

MAPPABLE_COLUMNS = tuple(k for k in COLUMN_KEYS if k not in MEDIA_KEYS)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Source:
    """A dataset as found on disk: its columns, some rows, and the mapping in effect (or guessed)."""

    path: Path
    columns: list[str]
    rows: list[dict]
    formatting: str
    ranking: bool
    columns_map: dict[str, str]  # explicit map: what the entry says, or the guess for a new file
    tags: dict[str, str]
    name: str | None = None  # the registered name, None for an upload
    dataset_dir: Path | None = None
    notes: list[str] = field(default_factory=list)  # how the file was read and what the guess left open


def open_registered(dataset_dir: str | Path, name: str, n_rows: int = 20) -> Source:
    spec = get_spec(name, dataset_dir)
    if spec.load_from != "file":
        raise WorkbenchError(f"dataset {name!r} is not a local file ({spec.where()}); the Data tab previews local "
                             "files")
    if not spec.path.exists():
        raise WorkbenchError(f"dataset {name!r}: file {spec.path} not found")
    notes: list[str] = []
    columns, rows = peek_rows(spec.path, n_rows, notes)
    if not rows:
        raise WorkbenchError(f"dataset {name!r}: {spec.path} holds no rows")
    if spec.formatting != "alpaca":
        notes += _tag_mismatch(spec, rows)
    return Source(spec.path, columns, rows, spec.formatting, spec.ranking, dict(spec.explicit_columns),
                  dict(spec.explicit_tags), name=name, dataset_dir=Path(dataset_dir), notes=notes)


def _tag_mismatch(spec: DatasetSpec, rows: list[dict]) -> list[str]:
    """A registered entry is shown as registered; only say when its role tags do not fit the turns."""
    turns = message_turns(rows, spec.columns.get("messages", ""))
    if not turns:
        return []
    found = detect_turn_tags(turns)["tags"]
    wrong = [k for k in ("role_tag", "content_tag") if k in found and found[k] != spec.tags[k]
             and sum(spec.tags[k] in t for t in turns) * 2 < len(turns)]
    if not wrong:
        return []
    return ["the role tags do not fit the messages (" + ", ".join(f"{k} is {spec.tags[k]!r}" for k in wrong)
            + "); they look like " + ", ".join(f"{k}={v!r}" for k, v in found.items())]


def open_upload(path: str | Path, n_rows: int = 20) -> Source:
    """An uploaded file: checked to be a readable data file, its format guessed."""
    path = Path(path)
    file_type(path)  # supported extension
    check_readable(path)
    notes: list[str] = []
    columns, rows = peek_rows(path, n_rows, notes)
    if not rows:
        raise WorkbenchError(f"{path.name}: the file holds no rows")
    guess = detect_format(columns, rows, notes)
    return Source(path, columns, rows, guess.get("formatting", "alpaca"), bool(guess.get("ranking")),
                  dict(guess.get("columns", {})), dict(guess.get("tags", {})), notes=notes)


def effective_columns(formatting: str, columns_map: dict[str, str], available: list[str]) -> dict[str, str | None]:
    """For each schema column: the file column used (explicit, else the format's default if present)."""
    defaults = DEFAULT_COLUMNS.get(formatting, {})
    out: dict[str, str | None] = {}
    for key in MAPPABLE_COLUMNS:
        value = columns_map.get(key) or defaults.get(key)
        out[key] = value if value in available else None
    return out


def make_entry(file_name: str, formatting: str, ranking: bool, columns: dict[str, str | None],
               tags: dict[str, str | None]) -> dict[str, Any]:
    """A dataset_info.json entry from the form: only what is set and differs from the format's defaults.

    A default column that the mapping leaves empty must be switched off explicitly, which a
    dataset_info.json entry cannot say; such a column is simply not listed (and is unused if absent).
    """
    if formatting not in FORMATS:
        raise WorkbenchError(f"unknown formatting {formatting!r}; choose from {', '.join(FORMATS)}")
    entry: dict[str, Any] = {"file_name": file_name}
    if formatting != "alpaca":
        entry["formatting"] = formatting
    if ranking:
        entry["ranking"] = True
    defaults = DEFAULT_COLUMNS[formatting]
    cols = {k: v for k, v in columns.items() if v and (k in ("prompt", "messages") or defaults.get(k) != v)}
    if cols:
        entry["columns"] = cols
    tag_defaults = DEFAULT_TAGS[formatting]
    tag_map = {k: v for k, v in tags.items() if v and tag_defaults.get(k) != v}
    if tag_map:
        entry["tags"] = tag_map
    return entry


def spec_for(source: Source, entry: dict[str, Any], name: str | None = None) -> DatasetSpec:
    entry = {**entry, "file_name": source.path.name}
    return spec_from_entry(name or source.name or source.path.stem, entry, source.path.parent)


@dataclass
class Preview:
    records: list[R.Record]
    kind: str
    warnings: list[str]
    stats: LengthStats
    rows_read: int
    used: dict[str, str] = field(default_factory=dict)
    template_notes: list[str] = field(default_factory=list)  # the template against this tokenizer and data

    def pieces(self, index: int, template: Template, tokenizer, **kw) -> list[tuple[str, bool]]:
        if not self.records:
            return []
        record = self.records[max(0, min(index, len(self.records) - 1))]
        return marked_pieces(record, template, tokenizer, **kw)


def preview(spec: DatasetSpec, template: Template, tokenizer, *, cutoff_len: int = 1024, max_rows: int = 2000,
            train_on_prompt: bool = False, mask_history: bool = False) -> Preview:
    """Records (at most ``max_rows``) and their token-length statistics under ``template``."""
    loaded = load_spec(spec, max_rows, allow_download=False)
    stats = token_lengths(loaded.records, template, tokenizer, cutoff_len=cutoff_len,
                          train_on_prompt=train_on_prompt, mask_history=mask_history)
    return Preview(loaded.records, loaded.kind, loaded.warnings(), stats, loaded.rows_read, loaded.used,
                   template_notes(template, tokenizer, loaded.records))


def template_notes(template: Template, tokenizer, records: list[R.Record]) -> list[str]:
    """What training with this template would refuse or warn about, and how tools would be rendered."""
    if records and all(isinstance(r, R.Text) for r in records):
        return []  # plain text is trained without a template
    notes = template.tokenizer_warnings(tokenizer)
    if template.tokenizer_problems(tokenizer):
        notes.append("training with this template is refused (sft, rm, dpo)")
    tools_note = template.tools_note(tokenizer) if any(map(uses_tools, records)) else None
    return notes + ([tools_note] if tools_note else [])


def safe_file_name(name: str) -> str:
    stem = _SAFE_NAME.sub("_", Path(name).name).strip("._") or "dataset"
    return stem


def register(dataset_dir: str | Path, name: str, source: Source, entry: dict[str, Any]) -> Path:
    """Write ``entry`` under ``name`` into ``dataset_dir/dataset_info.json``.

    An uploaded file is first copied into ``dataset_dir`` (never over a different file of the same
    name). The mapping is checked by loading the data before anything is written, and a copied file
    is removed again if the registry cannot be written. Returns the registry path.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    name = (name or "").strip()
    if not name:
        raise WorkbenchError("give the dataset a name")
    if name in read_info(dataset_dir):
        raise WorkbenchError(f"{dataset_dir / 'dataset_info.json'}: a dataset named {name!r} already exists; "
                             "choose another name")
    load_spec(spec_for(source, entry, name), 50, allow_download=False)  # the mapping must work
    copied = None
    inside = source.path.resolve().parent == dataset_dir.resolve()
    if inside:
        file_name = source.path.name
    else:
        file_name = f"{safe_file_name(name)}{source.path.suffix.lower()}"
        target = dataset_dir / file_name
        if target.exists():
            if target.read_bytes() != source.path.read_bytes():
                raise WorkbenchError(f"{target} already exists with different content; choose another name")
        else:
            dataset_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.path, target)
            copied = target
    try:
        return save_entry(dataset_dir, name, {**entry, "file_name": file_name})
    except BaseException:
        if copied is not None:
            copied.unlink(missing_ok=True)
        raise


_TOKENIZERS: dict[str, Any] = {}


def tokenizer_for(model: str):
    """The tokenizer of a model (alias, directory or cached hub id), loaded once per process."""
    path = resolve_model_path(model)
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        try:
            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise WorkbenchError(f"could not load the tokenizer of {model} ({type(exc).__name__}: {exc})") from None
    return _TOKENIZERS[path]


def describe_record(record: R.Record) -> str:
    if isinstance(record, R.Text):
        return "text"
    if isinstance(record, R.Preference):
        return f"preference pair ({len(record.prompt)} prompt turns)"
    turns = sum(1 for m in record.messages if m["role"] == "assistant")
    extra = ", tools" if record.tools else ""
    return f"conversation ({turns} assistant turn{'s' if turns != 1 else ''}{extra})"


__all__ = ["Source", "open_registered", "open_upload", "effective_columns", "make_entry", "spec_for", "preview",
           "register", "Preview", "TAG_KEYS", "MAPPABLE_COLUMNS"]
