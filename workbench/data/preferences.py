"""Preference data from side-by-side answers: a judgement "this answer is better than that one" becomes ranking
examples for the ``rm`` and ``dpo`` stages.

The Chat tab's Compare mode and the API's ``POST /v1/feedback`` call this module; it holds no UI code.

**Format.** One JSON object per line in ``DATASET_DIR/NAME.jsonl``, in LLaMA-Factory's sharegpt ranking format,
registered in ``dataset_info.json`` on first use as ``{"file_name": "NAME.jsonl", "formatting": "sharegpt",
"ranking": true, "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system":
"system", "tools": "tools"}}``::

    {"conversations": [{"from": "human", "value": "Who are you?"}],
     "chosen": {"from": "gpt", "value": "..."}, "rejected": {"from": "gpt", "value": "..."},
     "system": "", "tools": "",
     "chosen_model": "identity", "rejected_model": "base", "base_model": "smollm2-135m-instruct",
     "sampling": {"max_new_tokens": 256, "do_sample": false, ...}, "edited": false,
     "source": "chat-compare", "judgement": "3f2c...", "timestamp": "2026-12-02T10:11:12.345Z"}

Only ``conversations``, ``chosen``, ``rejected``, ``system`` and ``tools`` are mapped; the other fields are
provenance that loading and training ignore (an edited row also keeps ``original_chosen``, a row from the API
``chosen_id`` / ``rejected_id``, and ``rejected_sampling`` is there when the rejected answer was sampled differently).
With more than two answers, the chosen one is paired with each rejected one (one line each, sharing ``judgement``).
``conversations`` is the conversation the chosen answer replies to; when a rejected answer replied to a different
history (later turns of a multi-turn compare, where every column keeps its own), that history is kept as
``rejected_conversations``.

"Both bad" has no chosen answer, so nothing trainable: it is kept as a note in ``NAME.both_bad.jsonl`` next to
the dataset (the conversation, every answer, the models), which is not registered.

**Writes** are append-only: a whole line is written with one ``write`` to a file opened ``O_APPEND``, then
fsynced, while holding a process-wide lock and an exclusive ``flock`` on the file, so concurrent judgements
(two browser tabs, the web app and the API server) never interleave or lose a line. A line torn by a crash is cut
off before the next append. The registry entry is added after the first line is safely written, with the
registry's atomic writer (the previous ``dataset_info.json`` is kept as ``.bak``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

try:
    import fcntl
except ImportError:  # not on Windows: the in-process lock still serialises one server's writes
    fcntl = None  # type: ignore[assignment]

from workbench.config.base import WorkbenchError
from workbench.data.registry import info_path, read_info, save_entry

DEFAULT_DATASET = "preferences"
BOTH_BAD_SUFFIX = ".both_bad.jsonl"
COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system",
           "tools": "tools"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LOCK = threading.Lock()  # one writer at a time in this process (flock covers other processes)
_ROLE_TAGS = {"user": "human", "tool": "observation", "assistant": "gpt"}


@dataclass
class Answer:
    """One answer on screen: who gave it, the conversation it replies to, and how it was generated."""

    model: str
    prompt: list[dict]          # canonical turns (user / assistant / tool) ending with a user or tool turn
    message: dict               # the assistant turn: {"role": "assistant", "content", "tool_calls"?}
    sampling: dict | None = None
    system: str | None = None
    tools: list[dict] | None = None
    id: str | None = None       # the API's response id, kept as provenance


@dataclass
class Saved:
    """What one judgement wrote."""

    name: str
    path: Path
    rows: int                   # lines written now
    total: int                  # lines in the file now
    registered: bool = False    # the dataset was registered by this write
    skipped: list[str] = dataclasses.field(default_factory=list)  # pairs left out, and why
    both_bad: bool = False


# ---- names and the registry entry ----------------------------------------------------------------------

def check_name(name: str | None) -> str:
    """A dataset name that is also a plain file name in the dataset folder."""
    name = (name or "").strip() or DEFAULT_DATASET
    if not _NAME.match(name) or ".." in name:
        raise WorkbenchError(f"dataset name {name!r} is not allowed for preference data: use letters, digits, '.', "
                             "'_' and '-' (it is also the file name NAME.jsonl in the dataset folder)")
    return name


def file_name(name: str) -> str:
    return f"{check_name(name)}.jsonl"


def registry_entry(name: str) -> dict[str, Any]:
    """The dataset_info.json entry of a preference dataset."""
    return {"file_name": file_name(name), "formatting": "sharegpt", "ranking": True, "columns": dict(COLUMNS)}


def is_ours(entry: Any, name: str) -> bool:
    """Whether a registered entry is this module's file (or the same file registered again as ranking data)."""
    return isinstance(entry, dict) and entry.get("file_name") == file_name(name) and entry.get("ranking") is True


# ---- turning answers into rows -------------------------------------------------------------------------

def last_answer(conversation: list[dict]) -> tuple[list[dict], dict] | None:
    """(the turns before the last answer, the last answer) of a conversation that ends with an answer."""
    if not conversation or conversation[-1].get("role") != "assistant" or len(conversation) < 2:
        return None
    prompt = [clean(m) for m in conversation[:-1]]
    if prompt[-1]["role"] not in ("user", "tool"):
        return None
    return prompt, clean(conversation[-1])


def clean(message: dict) -> dict:
    """A canonical turn without anything but role, content and tool calls."""
    out = {"role": message.get("role"), "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"name": c.get("name"), "arguments": c.get("arguments", {})}
                             for c in message["tool_calls"]]
    return out


def sharegpt_turn(message: dict) -> dict:
    """A canonical turn as a sharegpt message (tool calls: a ``function_call`` turn, as LLaMA-Factory writes)."""
    role = message.get("role")
    content = message.get("content") or ""
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        if not content:
            value = calls[0] if len(calls) == 1 else calls
            return {"from": "function_call", "value": json.dumps(value, ensure_ascii=False)}
        return {"from": "gpt", "value": content, "tool_calls": calls}  # text and calls: Workbench reads both
    if role not in _ROLE_TAGS:
        raise WorkbenchError(f"a turn with role {role!r} cannot be kept as preference data")
    return {"from": _ROLE_TAGS[role], "value": content}


def empty(message: dict) -> bool:
    return not ((message.get("content") or "").strip() or message.get("tool_calls"))


def fingerprint(answers: Iterable[Answer]) -> str:
    """Identifies a set of answers on screen (to tell a judged turn from a new or regenerated one)."""
    data = [[a.model, a.prompt, a.message] for a in answers]
    return hashlib.sha1(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _tools_text(tools: list[dict] | None) -> str:
    return json.dumps(tools, ensure_ascii=False) if tools else ""


def check_prompt(answer: Answer) -> None:
    """A ranking prompt starts with a user turn, keeps the turn order, and ends with a user or tool turn."""
    from workbench.data.formats import valid_order

    prompt = answer.prompt
    if not prompt or prompt[-1].get("role") not in ("user", "tool") or not valid_order(prompt):
        raise WorkbenchError(f"the conversation {answer.model!r} answered cannot be a ranking prompt: it must start "
                             "with a user turn, alternate user and assistant turns (tool results after tool calls) "
                             "and end with a user or tool turn")


def judgement_rows(answers: list[Answer], chosen: str, *, rejected: list[str] | None = None,
                   edited: str | None = None, source: str = "chat-compare", base_model: str | None = None,
                   skipped: list[str] | None = None) -> list[dict]:
    """The ranking rows of one judgement: ``chosen`` (a model among ``answers``) paired with each rejected answer
    (``rejected``: those models; default every other answer). ``edited`` replaces the chosen answer's text."""
    by_model = {a.model: a for a in answers}
    if chosen not in by_model:
        have = ", ".join(by_model) or "none"
        raise WorkbenchError(f"{chosen!r} has no answer to prefer (answers from: {have})")
    others = [a for a in answers if a.model != chosen] if rejected is None else []
    for name in rejected or []:
        if name == chosen:
            raise WorkbenchError(f"{name!r} cannot be both the better and the worse answer")
        if name not in by_model:
            raise WorkbenchError(f"{name!r} has no answer to reject (answers from: {', '.join(by_model)})")
        others.append(by_model[name])
    return pair_rows(by_model[chosen], others, edited=edited, source=source, base_model=base_model, skipped=skipped)


def pair_rows(best: Answer, others: list[Answer], *, edited: str | None = None, source: str = "chat-compare",
              base_model: str | None = None, skipped: list[str] | None = None) -> list[dict]:
    """``best`` paired with each of ``others``: one ranking row each, sharing one ``judgement`` id.

    A pair with an empty side would be skipped by the loader, so it is left out here and named in ``skipped``.
    """
    if not others:
        raise WorkbenchError(f"a judgement needs a second answer to compare with: only {best.model!r} answered "
                             "this turn")
    check_prompt(best)
    message = dict(best.message)
    was_edited = edited is not None and edited.strip() != (best.message.get("content") or "").strip()
    if was_edited:  # the edited text becomes the whole answer (a tool call it made is dropped)
        message = {"role": "assistant", "content": edited.strip()}
    skipped = skipped if skipped is not None else []
    if empty(message):
        raise WorkbenchError(f"the answer of {best.model!r} is empty; edit it before keeping it as the better one")
    judgement, when = uuid.uuid4().hex, now_iso()
    rows = []
    for other in others:
        if empty(other.message):
            skipped.append(f"{other.model}: its answer is empty (the loader would skip the pair)")
            continue
        check_prompt(other)
        row: dict[str, Any] = {
            "conversations": [sharegpt_turn(m) for m in best.prompt],
            "chosen": sharegpt_turn(message),
            "rejected": sharegpt_turn(other.message),
            "system": best.system or "",
            "tools": _tools_text(best.tools),
            "chosen_model": best.model,
            "rejected_model": other.model,
        }
        if base_model:
            row["base_model"] = base_model
        row["sampling"] = best.sampling or {}
        if other.sampling is not None and other.sampling != best.sampling:
            row["rejected_sampling"] = other.sampling
        if other.prompt != best.prompt:
            row["rejected_conversations"] = [sharegpt_turn(m) for m in other.prompt]
        if (other.system or "") != (best.system or "") or _tools_text(other.tools) != _tools_text(best.tools):
            row["rejected_system"], row["rejected_tools"] = other.system or "", _tools_text(other.tools)
        row["edited"] = was_edited
        if was_edited:
            row["original_chosen"] = sharegpt_turn(best.message)
        if best.id or other.id:
            row["chosen_id"], row["rejected_id"] = best.id, other.id
        row.update(source=source, judgement=judgement, timestamp=when)
        rows.append(row)
    if not rows:
        raise WorkbenchError("nothing to keep: " + "; ".join(skipped))
    return rows


def both_bad_row(answers: list[Answer], *, source: str = "chat-compare", base_model: str | None = None) -> dict:
    """A note that no answer was good: not trainable as a ranking pair (see the module's docstring)."""
    if not answers:
        raise WorkbenchError("there are no answers to judge yet")
    first = answers[0]
    row: dict[str, Any] = {
        "conversations": [sharegpt_turn(m) for m in first.prompt],
        "answers": [{"model": a.model, "answer": sharegpt_turn(a.message), "sampling": a.sampling or {},
                     **({"conversations": [sharegpt_turn(m) for m in a.prompt]} if a.prompt != first.prompt else {}),
                     **({"id": a.id} if a.id else {})}
                    for a in answers],
        "system": first.system or "",
        "tools": _tools_text(first.tools),
        "verdict": "all bad",
    }
    if base_model:
        row["base_model"] = base_model
    row.update(source=source, judgement=uuid.uuid4().hex, timestamp=now_iso())
    return row


# ---- writing -------------------------------------------------------------------------------------------

def _lines(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in rows)


def _mend_tail(fd: int, path: Path) -> None:
    """Make the file end with a newline before appending: a complete JSON line written without one (by hand)
    gets its newline; a line torn by a crash mid-write (never a complete record) is cut off."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start, chunk = size, 1 << 16
        while start > 0:  # find the start of the last line
            step = min(chunk, start)
            f.seek(start - step)
            block = f.read(step)
            at = block.rfind(b"\n")
            if at >= 0:
                start = start - step + at + 1
                break
            start -= step
        f.seek(start)
        tail = f.read(size - start)
    try:
        complete = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        complete = False
    if complete:
        _write_all(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


def _looks_like_ours(path: Path) -> bool:
    """An unregistered NAME.jsonl is adopted only if its first line is a preference row."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
        row = json.loads(first.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(row, dict) and {"conversations", "chosen", "rejected"} <= set(row)


def _open_locked(path: Path) -> tuple[int, bool]:
    """An ``O_APPEND`` descriptor of ``path`` holding its exclusive lock, and whether this call created the file.
    Re-opened when the file was removed or replaced while waiting for the lock (a refused first write removes the
    empty file it made), so a line is never written into a file that is no longer in the folder."""
    while True:
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            same = os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd, created
        os.close(fd)


def append_lines(path: Path, rows: list[dict], *, before_write=None, after_write=None) -> int:
    """Append ``rows`` as JSON lines to ``path`` atomically (one write, fsync, locked); the number of lines
    in the file afterwards. ``before_write(created)`` / ``after_write()`` run under the same locks (checks,
    registration); when ``before_write`` refuses, a file this call created is removed again."""
    data = _lines(rows)
    path = Path(path)
    with _LOCK:
        fd, created = _open_locked(path)
        try:
            if before_write is not None:
                try:
                    before_write(created)
                except BaseException:
                    if created and os.fstat(fd).st_size == 0:
                        os.unlink(path)  # still locked: nobody has written to it
                    raise
            _mend_tail(fd, path)
            _write_all(fd, data)
            os.fsync(fd)
            if created:  # the new name in the folder is durable too
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            if after_write is not None:
                after_write()
            return _count_lines(path)
        finally:
            os.close(fd)  # releases the flock


def save_rows(dataset_dir: str | Path, name: str | None, rows: list[dict]) -> Saved:
    """Append ranking rows to the preference dataset ``name`` in ``dataset_dir``, registering it on first use."""
    name = check_name(name)
    folder = Path(dataset_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(name)
    registered = False

    def check(created: bool) -> None:
        # Refuse before writing: a name registered for another file, or someone else's file of that name.
        entry = read_info(folder).get(name)
        if entry is not None and not is_ours(entry, name):
            raise WorkbenchError(f"{info_path(folder)}: a dataset named {name!r} already exists and is not "
                                 f"preference data in {file_name(name)}; choose another name for the judgements")
        if entry is None and not created and path.stat().st_size and not _looks_like_ours(path):
            raise WorkbenchError(f"{path} exists and does not hold preference rows; choose another dataset name")

    def register() -> None:
        nonlocal registered
        if name not in read_info(folder):
            save_entry(folder, name, registry_entry(name))
            registered = True

    total = append_lines(path, rows, before_write=check, after_write=register)
    return Saved(name, path, len(rows), total, registered)


def save_both_bad(dataset_dir: str | Path, name: str | None, row: dict) -> Saved:
    """Keep a "both bad" note in NAME.both_bad.jsonl (not registered: it has no chosen answer)."""
    name = check_name(name)
    folder = Path(dataset_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name + BOTH_BAD_SUFFIX)
    total = append_lines(path, [row])
    return Saved(name, path, 1, total, both_bad=True)


def record_pairs(dataset_dir: str | Path, name: str | None, best: Answer, others: list[Answer], *,
                 edited: str | None = None, source: str = "api", base_model: str | None = None) -> Saved:
    """``best`` is better than each of ``others`` (the API's form: answers may come from the same model)."""
    skipped: list[str] = []
    rows = pair_rows(best, others, edited=edited, source=source, base_model=base_model, skipped=skipped)
    saved = save_rows(dataset_dir, name, rows)
    saved.skipped = skipped
    return saved


def record(dataset_dir: str | Path, name: str | None, answers: list[Answer], chosen: str | None, *,
           rejected: list[str] | None = None, edited: str | None = None, source: str = "chat-compare",
           base_model: str | None = None) -> Saved:
    """One judgement: ``chosen`` is better than the others (or than ``rejected``); ``chosen=None``: all bad."""
    if chosen is None:
        pool = answers if rejected is None else [a for a in answers if a.model in rejected]
        return save_both_bad(dataset_dir, name, both_bad_row(pool, source=source, base_model=base_model))
    skipped: list[str] = []
    rows = judgement_rows(answers, chosen, rejected=rejected, edited=edited, source=source, base_model=base_model,
                          skipped=skipped)
    saved = save_rows(dataset_dir, name, rows)
    saved.skipped = skipped
    return saved


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a preference file (for tests and tools)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def describe(saved: Saved) -> str:
    """A one-paragraph summary of a write, for the faces."""
    if saved.both_bad:
        notes = f"{saved.total} note" + ("s" if saved.total != 1 else "")
        return (f"Noted: no answer was good — kept in `{saved.path}` ({notes}; not training data: a ranking pair "
                "needs a better answer).")
    pairs = f"{saved.rows} pair" + ("s" if saved.rows != 1 else "")
    text = f"Kept {pairs} in **{saved.name}** (`{saved.path}`, now {saved.total} pairs)."
    if saved.registered:
        text += f" Registered **{saved.name}** in `{info_path(saved.path.parent)}`: train it with stage rm or dpo."
    if saved.skipped:
        text += " Left out: " + "; ".join(saved.skipped) + "."
    return text
