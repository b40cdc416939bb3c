"""Rows out of data files (json, JSON lines, csv, parquet, arrow, text) and the checks every reader shares:
the file type, empty and binary files, and bytes that are not UTF-8, each named by file, line and offset."""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from workbench.config.base import WorkbenchError

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow",
              ".txt": "text"}
csv.field_size_limit(1 << 30)  # a row may hold a whole article: far over csv's 128 KiB field default


def file_type(path: Path) -> str:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise WorkbenchError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use one of "
                             f"{', '.join(sorted(FILE_TYPES))}")
    return kind


def check_readable(path: Path) -> None:
    """Refuse empty and binary files and non-UTF-8 text early, with the file's name.

    The whole of a text file is checked, not just its head: a command that reads only some rows
    (``max_samples``, streaming, a preview) must fail on a bad byte exactly as a full read does, not go
    on with fewer rows.
    """
    if not path.exists():
        raise WorkbenchError(f"{path}: file not found")
    if path.is_dir():
        return
    kind = file_type(path)
    if path.stat().st_size == 0:
        raise WorkbenchError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(65536)
    if kind == "parquet":
        if not head.startswith(b"PAR1"):
            raise WorkbenchError(f"{path}: not a parquet file (bad magic bytes)")
        return
    if kind == "arrow":
        return
    if b"\x00" in head:
        raise WorkbenchError(f"{path}: not a text file (it contains binary data); expected {kind} text")
    check_utf8(path)


_UTF8_OK: dict[tuple[str, int, int], bool] = {}  # files already scanned, by (path, size, mtime): scan once


def check_utf8(path: Path) -> None:
    """Raise the one message every reader gives for a byte that is not UTF-8: file, line and byte offset."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _UTF8_OK:
        return
    problem = _first_bad_utf8(path)
    if problem is not None:
        offset, line, byte = problem
        raise WorkbenchError(f"{path} line {line}: not UTF-8 text (bad byte at offset {offset}: 0x{byte:02x}); "
                             "save the file as UTF-8")
    _UTF8_OK[key] = True


def _first_bad_utf8(path: Path, chunk: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, line number, the byte) of the first byte that is not UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = 0  # file offset of the chunk being decoded
    newlines = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                offset = start - pending + exc.start
                before = exc.object[:exc.start].count(b"\n")  # the pending bytes hold no newline
                return offset, newlines + before + 1, exc.object[exc.start]
            if not data:
                return None
            newlines += data.count(b"\n")
            start += len(data)


def _json_rows(path: Path, notes: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    with open(path, "r", encoding="utf-8") as f:
        head = f.read(4096).lstrip("\ufeff \t\r\n")
    if head.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None
        for i, row in enumerate(data, 1):
            yield f"{path.name} row {i}", row
        return
    # JSON lines (also accepted in .json files, as `datasets` does).
    one_object_file = path.suffix.lower() == ".json"
    with open(path, "r", encoding="utf-8-sig") as f:
        held: tuple[str, dict] | None = None  # a .json file's first object, until a second shows it is JSON lines
        seen = False
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if not seen:  # perhaps one JSON object written over many lines
                    yield from _whole_json_object(path, notes, exc, number)
                    return
                raise WorkbenchError(f"{path} line {number} column {exc.colno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise WorkbenchError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            where = f"{path.name} line {number}"
            if not seen and one_object_file:
                seen, held = True, (where, row)
                continue
            seen = True
            if held is not None:
                yield held
                held = None
            yield where, row
    if held is not None:  # the whole .json file is one object, not a list of rows
        yield from _object_rows(path, held[1], notes)


def _whole_json_object(path: Path, notes: list[str] | None, line_error: json.JSONDecodeError, line: int
                       ) -> Iterator[tuple[str, Any]]:
    """A file whose first line is not JSON on its own: one JSON object written over many lines, or an error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        if path.suffix.lower() == ".jsonl":  # JSON lines: the broken line is the news
            raise WorkbenchError(f"{path} line {line} column {line_error.colno}: not valid JSON "
                                 f"({line_error.msg})") from None
        raise WorkbenchError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a JSON list of rows or JSON lines, got {type(data).__name__}")
    yield from _object_rows(path, data, notes)


def _object_rows(path: Path, data: dict, notes: list[str] | None) -> Iterator[tuple[str, Any]]:
    """A file that is one JSON object: the rows of its only key when that holds a list of objects (a common
    wrapper, e.g. ``{"data": [...]}``), else refused: read as one row it would give a baffling column."""
    keys = list(data)
    if len(keys) == 1:
        value = data[keys[0]]
        if value == []:
            raise WorkbenchError(f"{path}: the file is one JSON object whose only key {keys[0]!r} is an empty list: "
                                 "it holds no rows")
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            if notes is not None:
                notes.append(f"{path.name} is one JSON object; its rows were read from its only key {keys[0]!r} "
                             f"({len(value)} rows)")
            for i, row in enumerate(value, 1):
                yield f"{path.name} row {i} (in {keys[0]!r})", row
            return
    shown = ", ".join(map(repr, keys[:12])) + (" …" if len(keys) > 12 else "") if keys else "none"
    hint = ("; official SQuAD files become rows with `python -m workbench data convert --task squad_v2`"
            if "data" in keys and "version" in keys else "")
    raise WorkbenchError(f"{path}: the file is one JSON object (keys: {shown}), not a list of rows; write a "
                         f"JSON list [{{...}}, {{...}}] or one object per line (JSON lines){hint}")


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row:
                raise WorkbenchError(f"{path} line {reader.line_num}: more fields than the header has columns")
            yield f"{path.name} line {reader.line_num}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise WorkbenchError(f"{path}: not a readable parquet file ({exc})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            i += 1
            yield f"{path.name} row {i}", row


def _arrow_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except Exception:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
        except Exception as exc:
            raise WorkbenchError(f"{path}: not a readable arrow file ({exc})") from None
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    i = 0
    for batch in batches:
        for row in batch.to_pylist():
            i += 1
            yield f"{path.name} row {i}", row


def _text_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "r", encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield f"{path.name} line {number}", {"text": line}


_READERS: dict[str, Callable[[Path], Iterator[tuple[str, Any]]]] = {
    "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows, "arrow": _arrow_rows, "text": _text_rows,
}


def data_files(path: Path) -> list[Path]:
    """A file, or every data file in a folder (one type only, as LLaMA-Factory requires)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_TYPES)
        if not files:
            raise WorkbenchError(f"{path}: the folder holds no data files ({', '.join(sorted(FILE_TYPES))})")
        kinds = {file_type(p) for p in files}
        if len(kinds) > 1:
            raise WorkbenchError(f"{path}: the folder mixes file types ({', '.join(sorted(kinds))}); keep one type")
        return files
    if not path.exists():
        raise WorkbenchError(f"{path}: file not found")
    return [path]


def iter_file_rows(path: Path, notes: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of a file or folder; ``notes`` collects what the user should know
    about how a file was read (a JSON object unwrapped)."""
    for p in data_files(Path(path)):
        check_readable(p)
        kind = file_type(p)
        try:
            if kind == "json":
                yield from _json_rows(p, notes)
            else:
                yield from _READERS[kind](p)
        except UnicodeDecodeError:
            # Only if the file changed after it was checked: report it as the check does.
            _UTF8_OK.clear()
            check_utf8(p)
            raise


def peek_rows(path: Path, n: int = 20, notes: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """The first ``n`` rows of a file and the union of their columns (in first-seen order)."""
    rows: list[dict] = []
    for where, row in iter_file_rows(path, notes):
        if not isinstance(row, dict):
            raise WorkbenchError(f"{where}: expected an object with columns, got {type(row).__name__}")
        rows.append(row)
        if len(rows) >= n:
            break
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns), rows
