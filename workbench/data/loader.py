"""Load registered datasets as canonical records, and build tokenised training sets from them.

``load_records(data_args)`` reads every dataset named in ``data_args.dataset`` (each capped at
``max_samples``, read lazily so a huge JSON-lines or text file is never loaded whole) and returns the
records combined. ``build_dataset(data_args, tokenizer, stage)`` turns them into what the trainers eat:

* ``pt``  — texts + EOS, concatenated and cut into ``cutoff_len`` blocks: input_ids/attention_mask/labels;
* ``sft`` — conversations through the chat template: input_ids/attention_mask/labels (prompt = -100),
  optionally packed into ``cutoff_len`` rows with position ids restarting per example;
* ``rm`` / ``dpo`` — TRL's text columns prompt/chosen/rejected: the prompt rendered with the generation
  prompt, chosen/rejected = the answer text plus the end-of-turn token.

Tokenised sets are cached under ``$WORKBENCH_HOME/cache/datasets`` keyed by the data's content, the
template, the tokenizer and every option that changes the result, so a second run starts at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from workbench.config.base import WorkbenchError
from workbench.config.data import STAGES, DataArgs
from workbench.data import records as R
from workbench.data.files import data_files, iter_file_rows
from workbench.data.formats import RowConverter, Skip
from workbench.data.packing import pack_dataset
from workbench.data.registry import check_sha1, file_sha1, get_spec, hub_cached, needs_download_message, offline
from workbench.data.spec import DatasetSpec
from workbench.data.templates import IGNORE_INDEX, Template, resolve_template
from workbench.paths import home

CACHE_VERSION = 1
PEEK_ROWS = 100  # rows read ahead to learn a file's columns


# ---- rows of a dataset ---------------------------------------------------------------------------

def _hub_rows(spec: DatasetSpec, streaming: bool, allow_download: bool = True) -> Iterator[tuple[str, Any]]:
    if spec.load_from != "hf_hub":
        raise WorkbenchError(needs_download_message(spec))
    if (offline() or not allow_download) and not hub_cached(spec):
        raise WorkbenchError(needs_download_message(spec, offline=offline()))
    import datasets

    try:
        ds = datasets.load_dataset(spec.source, name=spec.subset, split=spec.split, data_dir=spec.folder,
                                   streaming=streaming)
    except Exception as exc:
        if offline():
            raise WorkbenchError(needs_download_message(spec)) from None
        raise WorkbenchError(f"dataset {spec.name!r}: could not load {spec.source} from the hub "
                             f"({type(exc).__name__}: {exc})") from None
    if not streaming:
        _check_arrow_utf8(ds, spec)
    rows = iter(ds)
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:  # `datasets` keeps bad bytes and fails only when a row is read
            raise WorkbenchError(_hub_bad_utf8(spec, i + 1, exc)) from None
        i += 1
        yield f"{spec.source} row {i}", row


def _hub_bad_utf8(spec: DatasetSpec, row: int, exc: UnicodeDecodeError) -> str:
    return (f"dataset {spec.name!r} ({spec.source}) row {row}: not UTF-8 text (bad byte at offset {exc.start} of a "
            f"text value: 0x{exc.object[exc.start]:02x}); its data files must be UTF-8")


def _check_arrow_utf8(ds, spec: DatasetSpec) -> None:
    """A whole hub dataset's text checked before any row is used (as local files are), the row named."""
    import pyarrow as pa

    table = getattr(getattr(ds, "data", None), "table", None)
    if table is None or getattr(ds, "_indices", None) is not None:
        return
    offset = 0
    for batch in table.to_batches(max_chunksize=1024):
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid:
            for j in range(batch.num_rows):
                try:
                    batch.slice(j, 1).to_pylist()
                except UnicodeDecodeError as exc:
                    raise WorkbenchError(_hub_bad_utf8(spec, offset + j + 1, exc)) from None
        offset += batch.num_rows


def spec_rows(spec: DatasetSpec, streaming: bool = False, allow_download: bool = True,
              notes: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    fallback = spec.alternatives.get("file_name")
    if (spec.load_from.endswith("_hub") and fallback and (offline() or not allow_download)
            and not hub_cached(spec) and (spec.dataset_dir.expanduser() / fallback).exists()):
        # LLaMA-Factory reads the hub source when both are listed; without network we read the local copy.
        if notes is not None:
            where = "this machine is offline" if offline() else "checking does not download"
            notes.append(f"dataset {spec.name!r}: {spec.source} is on the hub and not cached, and {where}: read "
                         f"file_name {fallback} instead")
        spec = dataclasses.replace(spec, load_from="file", source=fallback)
    if spec.load_from == "file":
        if not spec.path.exists():
            raise WorkbenchError(f"dataset {spec.name!r}: file {spec.path} not found")
        check_sha1(spec, notes if notes is not None else [])
        return iter_file_rows(spec.path, notes)
    if spec.load_from == "script":
        local = spec.dataset_dir / spec.source
        if local.exists():
            return iter_file_rows(local, notes)
        raise WorkbenchError(f"dataset {spec.name!r}: script_url {spec.source} is not a local folder of data files "
                             "(dataset loading scripts are not supported by datasets 4+)")
    return _hub_rows(spec, streaming, allow_download)


# ---- records -------------------------------------------------------------------------------------

@dataclass
class LoadedDataset:
    """The records of one dataset and what happened while reading it."""

    spec: DatasetSpec
    records: list[R.Record]
    kind: str
    columns: list[str]
    used: dict[str, str]
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the file was read, e.g. a JSON object unwrapped

    def warnings(self) -> list[str]:
        out = [f"dataset {self.spec.name!r}: {note}" for note in self.notes]
        if not self.skipped:
            return out
        parts = [f"{n} × {reason} (first: {self.skip_examples[reason]})" for reason, n in self.skipped.most_common()]
        return out + [f"dataset {self.spec.name!r}: skipped {sum(self.skipped.values())} of {self.rows_read} rows: "
                      + "; ".join(parts)]


class _RowStream:
    """Rows of a dataset → records, lazily; keeps the skip counts."""

    def __init__(self, spec: DatasetSpec, streaming: bool = False, allow_download: bool = True):
        self.spec = spec
        self.notes: list[str] = []
        self.rows = spec_rows(spec, streaming, allow_download, self.notes)
        self.buffer: list[tuple[str, Any]] = []
        columns: dict[str, None] = {}
        for where, row in self.rows:  # the first rows tell which columns exist (JSON rows may differ)
            if not isinstance(row, dict):
                raise WorkbenchError(f"{where}: expected an object with columns, got {type(row).__name__}")
            self.buffer.append((where, row))
            columns.update(dict.fromkeys(row))
            if len(self.buffer) >= PEEK_ROWS:
                break
        if not self.buffer:  # say so, rather than that the mapped columns are missing
            raise WorkbenchError(f"dataset {spec.name!r}: {spec.where()} holds no rows")
        self.columns = list(columns)
        self.converter = RowConverter(spec, self.columns)
        self.rows_read = 0
        self.skipped: Counter = Counter()
        self.skip_examples: dict[str, str] = {}

    def __iter__(self) -> Iterator[R.Record]:
        def all_rows():
            yield from self.buffer
            yield from self.rows

        for where, row in all_rows():
            self.rows_read += 1
            try:
                yield self.converter.convert(row, where)
            except Skip as skip:
                self.skipped[skip.reason] += 1
                self.skip_examples.setdefault(skip.reason, where)


def load_spec(spec: DatasetSpec, max_samples: int | None = None, seed: int = 42, *,
              allow_download: bool = True) -> LoadedDataset:
    """Read one dataset into records (at most ``max_samples``; ``num_samples`` of the entry applied).

    With ``allow_download=False`` a hub dataset that is not in the local cache is an error that says it
    needs download (``data check`` never starts downloads).
    """
    stream = _RowStream(spec, allow_download=allow_download)
    out: list[R.Record] = []
    for record in stream:
        out.append(record)
        if max_samples and len(out) >= max_samples and not spec.num_samples:
            break
    if not out and stream.rows_read:
        reasons = "; ".join(f"{n} × {r} (first: {stream.skip_examples[r]})" for r, n in stream.skipped.most_common())
        raise WorkbenchError(f"dataset {spec.name!r}: none of the {stream.rows_read} rows is usable: {reasons}")
    if spec.num_samples:
        out = _resample(out, spec.num_samples, seed)
        if max_samples:
            out = out[:max_samples]
    return LoadedDataset(spec, out, stream.converter.kind, stream.columns, stream.converter.used_columns(),
                         stream.rows_read, stream.skipped, stream.skip_examples, stream.notes)


def _resample(items: list, n: int, seed: int) -> list:
    """LLaMA-Factory's ``num_samples``: a random subset, or repeats plus a random remainder."""
    rng = random.Random(seed)
    if n <= len(items):
        return [items[i] for i in sorted(rng.sample(range(len(items)), n))]
    reps, rest = divmod(n, len(items))
    return items * reps + [items[i] for i in sorted(rng.sample(range(len(items)), rest))]


def load_datasets(names: list[str], data_args: DataArgs, log: Callable[[str], None] | None = None
                  ) -> list[LoadedDataset]:
    if not names:
        raise WorkbenchError("dataset: name at least one dataset (comma-separated)")
    log = log or _log
    out = []
    for name in names:
        spec = get_spec(name, data_args.dataset_path())
        loaded = load_spec(spec, data_args.max_samples, data_args.seed)
        for w in loaded.warnings():
            log(f"warning: {w}")
        out.append(loaded)
    return out


def load_records(data_args: DataArgs, log: Callable[[str], None] | None = None) -> list[R.Record]:
    """Every dataset of ``data_args.dataset`` as canonical records, combined in order."""
    return [r for loaded in load_datasets(data_args.dataset_names(), data_args, log) for r in loaded.records]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- tokenisation ---------------------------------------------------------------------------------

def _need_kind(records: list[R.Record], stage: str, names: str) -> None:
    kinds = Counter(r.kind for r in records)
    want = {"pt": ("text", "conversation"), "sft": ("conversation",), "rm": ("preference",),
            "dpo": ("preference",)}[stage]
    bad = {k: n for k, n in kinds.items() if k not in want}
    if not bad:
        return
    hint = {"preference": "preference pairs (ranking) train with stage rm or dpo",
            "text": "plain text trains with stage pt",
            "conversation": "conversations train with stage sft (or pt); rm/dpo need a ranking dataset"}
    what = "; ".join(f"{n} {k} record(s): {hint[k]}" for k, n in bad.items())
    raise WorkbenchError(f"stage {stage}: dataset(s) {names} do not fit: {what}")


def _record_text(record: R.Record) -> str:
    if isinstance(record, R.Text):
        return record.text
    parts = [record.system] if getattr(record, "system", None) else []
    parts += [m.get("content") or "" for m in record.messages]  # type: ignore[union-attr]
    return "\n\n".join(p for p in parts if p)


def encode_sft_batch(batch: dict[str, list], *, template: Template, tokenizer, data_args: DataArgs,
                     stats: dict | None = None) -> dict[str, list]:
    """datasets.map function: a batch of JSON records → input_ids/attention_mask/labels (dropped rows vanish)."""
    recs = [R.from_json(s) for s in batch["record"]]
    convs = [(r.messages, r.system if r.system is not None else data_args.default_system, r.tools) for r in recs]
    encoded = template.encode_supervised_batch(
        tokenizer, convs, train_on_prompt=data_args.train_on_prompt, mask_history=data_args.mask_history,
        cutoff_len=data_args.cutoff_len, stats=stats,
    )
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for item in encoded:
        if item is None:
            continue
        ids, labels = item
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


def encode_pt_texts(texts: list[str], tokenizer, cutoff_len: int) -> dict[str, list]:
    """Texts + EOS, concatenated and cut into ``cutoff_len`` blocks (the last partial block is kept)."""
    eos = tokenizer.eos_token or ""
    ids = tokenizer([t + eos for t in texts], add_special_tokens=False)["input_ids"]
    flat = [t for seq in ids for t in seq]
    blocks = [flat[i:i + cutoff_len] for i in range(0, len(flat), cutoff_len)]
    blocks = [b for b in blocks if len(b) > 1]
    return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": [list(b) for b in blocks]}


def preference_columns(records: list[R.Record], template: Template, tokenizer, default_system: str | None
                       ) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for r in records:
        assert isinstance(r, R.Preference)
        system = r.system if r.system is not None else default_system
        out["prompt"].append(template.render(tokenizer, r.prompt, system, r.tools, add_generation_prompt=True))
        out["chosen"].append(template.response_text(tokenizer, r.chosen))
        out["rejected"].append(template.response_text(tokenizer, r.rejected))
    return out


# ---- cache ------------------------------------------------------------------------------------------

def cache_root() -> Path:
    return home() / "cache" / "datasets"


def _content_fingerprint(spec: DatasetSpec) -> str:
    if spec.load_from != "file":
        return f"{spec.load_from}:{spec.source}:{spec.subset}:{spec.split}:{spec.folder}"
    parts = []
    memo_path = cache_root() / "file_sha1.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    for p in data_files(spec.path):
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = file_sha1(p)  # hashed once per file version: big files are not re-read on every run
        parts.append(memo[key])
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo_path.write_text(json.dumps(memo))
    except OSError:
        pass
    return ",".join(parts)


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha1()
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    for attr in ("chat_template", "bos_token", "eos_token", "pad_token"):
        h.update(str(getattr(tokenizer, attr, None)).encode())
    return h.hexdigest()


def template_fingerprint(template: Template) -> str:
    return hashlib.sha1(repr(vars(template) if vars(template) else template.name).encode()).hexdigest()


def _cache_key(specs: list[DatasetSpec], eval_specs: list[DatasetSpec], data_args: DataArgs, template: Template,
               tokenizer, stage: str) -> str:
    payload = {
        "v": CACHE_VERSION, "stage": stage,
        "data": [(s.name, s.to_entry(), _content_fingerprint(s)) for s in specs],
        "eval": [(s.name, s.to_entry(), _content_fingerprint(s)) for s in eval_specs],
        "template": [template.name, template_fingerprint(template)],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "args": {k: getattr(data_args, k) for k in ("cutoff_len", "max_samples", "val_size", "train_on_prompt",
                                                    "mask_history", "packing", "seed", "default_system")},
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---- building ----------------------------------------------------------------------------------------

def split_for_eval(records: list, val_size: float, seed: int) -> tuple[list, list]:
    """(training rows, held-out rows): ``val_size`` rows (a count, or a fraction when below 1) drawn with ``seed``;
    the training run and the Train tab's plan both split this way, so their counts agree."""
    if not val_size:
        return records, []
    n_eval = int(val_size) if val_size >= 1 else max(1, round(len(records) * val_size))
    if n_eval >= len(records):
        raise WorkbenchError(f"val_size: {val_size} leaves no training rows out of {len(records)}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in eval_idx], [records[i] for i in sorted(eval_idx)]


def _tokenize(records: list[R.Record], stage: str, template: Template, tokenizer, data_args: DataArgs,
              stats: dict):
    import datasets

    if stage in ("rm", "dpo"):
        return datasets.Dataset.from_dict(preference_columns(records, template, tokenizer, data_args.default_system))
    if stage == "pt":
        return datasets.Dataset.from_dict(encode_pt_texts([_record_text(r) for r in records], tokenizer,
                                                          data_args.cutoff_len))
    kto_bad = [r for r in records if getattr(r, "kto_tag", None) is False]
    if kto_bad:
        stats["undesirable_kto_rows_dropped"] = len(kto_bad)
        records = [r for r in records if getattr(r, "kto_tag", None) is not False]
    source = datasets.Dataset.from_dict({"record": [R.to_json(r) for r in records]})
    workers = data_args.preprocessing_num_workers
    if workers and workers > 1:
        # Subprocesses cannot update our stats dict; count drops from the row difference instead.
        ds = source.map(encode_sft_batch, batched=True, batch_size=data_args.preprocessing_batch_size,
                        num_proc=workers, remove_columns=["record"], load_from_cache_file=False,
                        fn_kwargs={"template": template, "tokenizer": tokenizer, "data_args": data_args},
                        desc="Tokenising")
        stats["dropped"] = len(records) - len(ds)
    else:
        columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        size = data_args.preprocessing_batch_size
        for i in range(0, len(records), size):
            part = encode_sft_batch({"record": source["record"][i:i + size]}, template=template,
                                    tokenizer=tokenizer, data_args=data_args, stats=stats)
            for k in columns:
                columns[k].extend(part[k])
        ds = datasets.Dataset.from_dict(columns)
    if data_args.packing:
        ds = pack_dataset(ds, data_args.cutoff_len)
    return ds


def build_dataset(data_args: DataArgs, tokenizer, stage: str = "sft", *, model_name_or_path: str | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tokenised train (and eval) sets for ``stage``; see the module docstring for the columns.

    Returns ``{"train": Dataset | IterableDataset, "eval": Dataset | None, "stats": dict}``.
    """
    log = log or _log
    if stage not in STAGES:
        raise WorkbenchError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    if not getattr(tokenizer, "is_fast", False):
        raise WorkbenchError("a fast tokenizer is needed (tokenizer.json); this model only has a slow tokenizer")
    template = resolve_template(data_args.template, model_name_or_path or getattr(tokenizer, "name_or_path", None))
    names, eval_names = data_args.dataset_names(), data_args.eval_dataset_names()
    if not names:
        raise WorkbenchError("dataset: name at least one dataset (comma-separated)")
    if stage != "pt":  # before reading any data: a model that could never learn to stop is not worth a run
        template.check_tokenizer(tokenizer)
        for warning in template.tokenizer_warnings(tokenizer):
            log(f"warning: {warning}")
    if data_args.streaming:
        return _build_streaming(data_args, tokenizer, stage, template, log)
    specs = [get_spec(n, data_args.dataset_path()) for n in names]
    eval_specs = [get_spec(n, data_args.dataset_path()) for n in eval_names]
    key = _cache_key(specs, eval_specs, data_args, template, tokenizer, stage)
    cache_dir = cache_root() / key
    if (cache_dir / "meta.json").is_file() and not data_args.overwrite_cache:
        import datasets

        meta = json.loads((cache_dir / "meta.json").read_text())
        log(f"Using the tokenised dataset cached in {cache_dir} (overwrite_cache rebuilds it)")
        if meta["stats"].get("tools_note"):
            log(f"note: {meta['stats']['tools_note']}")
        train = datasets.load_from_disk(str(cache_dir / "train"))
        evals = datasets.load_from_disk(str(cache_dir / "eval")) if (cache_dir / "eval").is_dir() else None
        return {"train": train, "eval": evals, "stats": {**meta["stats"], "cached": True, "cache_dir": str(cache_dir)}}

    started = time.perf_counter()
    loaded = load_datasets(names, data_args, log)
    records = [r for d in loaded for r in d.records]
    _need_kind(records, stage, ",".join(names))
    if eval_names:
        eval_records = [r for d in load_datasets(eval_names, data_args, log) for r in d.records]
        _need_kind(eval_records, stage, ",".join(eval_names))
        train_records = records
    else:
        train_records, eval_records = split_for_eval(records, data_args.val_size, data_args.seed)
    stats: dict[str, Any] = {"template": template.name, "records": len(records), "train_records": len(train_records),
                             "eval_records": len(eval_records)}
    tools_note = template.tools_note(tokenizer) if stage != "pt" and any(map(uses_tools, records)) else None
    if tools_note:
        stats["tools_note"] = tools_note
        log(f"note: {tools_note}")
    train = _tokenize(train_records, stage, template, tokenizer, data_args, stats)
    evals = _tokenize(eval_records, stage, template, tokenizer, data_args, stats) if eval_records else None
    if len(train) == 0:
        raise WorkbenchError(f"no training example is left after tokenisation (cutoff_len={data_args.cutoff_len}); "
                             f"stats: {stats}")
    stats.update(train_rows=len(train), eval_rows=len(evals) if evals is not None else 0,
                 seconds=round(time.perf_counter() - started, 3))
    for key_name, what in (("dropped", "had no response token left and were dropped"),
                           ("prompt_shortened", "had their prompt shortened to keep the response"),
                           ("truncated", f"were cut at cutoff_len={data_args.cutoff_len}")):
        if stats.get(key_name):
            log(f"warning: {stats[key_name]} example(s) {what}")
    tmp = cache_dir.with_name(cache_dir.name + f".tmp{int(time.time() * 1000)}")
    try:
        with _quiet_progress():
            train.save_to_disk(str(tmp / "train"))
            if evals is not None:
                evals.save_to_disk(str(tmp / "eval"))
        (tmp / "meta.json").write_text(json.dumps({"stats": stats, "datasets": names}, indent=2))
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        tmp.rename(cache_dir)
        import datasets

        # Serve the saved copy: memory-mapped and identical to what the next run loads.
        train = datasets.load_from_disk(str(cache_dir / "train"))
        evals = datasets.load_from_disk(str(cache_dir / "eval")) if evals is not None else None
    except OSError as exc:
        log(f"warning: could not cache the tokenised dataset in {cache_dir} ({exc})")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"train": train, "eval": evals, "stats": {**stats, "cached": False, "cache_dir": str(cache_dir)}}


def uses_tools(record: R.Record) -> bool:
    """Whether a record has tool definitions, tool calls or tool results."""
    if isinstance(record, R.Text):
        return False
    if record.tools:
        return True
    messages = record.messages if isinstance(record, R.Conversation) else [*record.prompt, record.chosen,
                                                                            record.rejected]
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


@contextlib.contextmanager
def _quiet_progress():
    """No progress bars for quick internal steps (saving a few MB to the cache)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _build_streaming(data_args: DataArgs, tokenizer, stage: str, template: Template, log) -> dict[str, Any]:
    """Lazily read and tokenise: for data that does not fit in memory."""
    import datasets

    if stage in ("rm", "dpo"):
        raise WorkbenchError(f"streaming: stage {stage} needs the whole preference set; turn streaming off "
                             "(use max_samples to cap a big dataset)")
    specs = [get_spec(n, data_args.dataset_path()) for n in data_args.dataset_names()]

    def generate(specs=specs):
        for spec in specs:
            count = 0
            for record in _RowStream(spec, streaming=True):
                yield {"record": R.to_json(record)}
                count += 1
                if data_args.max_samples and count >= data_args.max_samples:
                    break

    for spec in specs:  # fail now, not in the middle of training, on a bad mapping or a missing file
        for note in _RowStream(spec, streaming=True).notes:
            log(f"warning: dataset {spec.name!r}: {note}")
    source = datasets.IterableDataset.from_generator(generate)
    if stage == "pt":
        def encode(batch):
            texts = [_record_text(R.from_json(s)) for s in batch["record"]]
            return encode_pt_texts(texts, tokenizer, data_args.cutoff_len)
    else:
        def encode(batch):
            return encode_sft_batch(batch, template=template, tokenizer=tokenizer, data_args=data_args)
    n_eval = int(data_args.val_size) if data_args.val_size >= 1 else 0
    evals = None
    if n_eval:
        eval_rows = list(source.take(n_eval))
        evals = datasets.Dataset.from_list(eval_rows).map(encode, batched=True, remove_columns=["record"])
        source = source.skip(n_eval)
    train = source.shuffle(seed=data_args.seed, buffer_size=data_args.buffer_size)
    train = train.map(encode, batched=True, batch_size=data_args.preprocessing_batch_size, remove_columns=["record"])
    log("Streaming: rows are read and tokenised while training (set max_steps; epochs are not known in advance)")
    return {"train": train, "eval": evals, "stats": {"template": template.name, "streaming": True}}


def label_mask_summary(labels: list[int]) -> tuple[int, int]:
    """(trained tokens, total tokens)."""
    return sum(1 for x in labels if x != IGNORE_INDEX), len(labels)
