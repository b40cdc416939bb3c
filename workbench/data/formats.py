"""Rows of alpaca / sharegpt / openai data → canonical records, and format detection for new files.

Problems are handled in two ways:

* a row whose *shape* is wrong (history not a list of pairs, messages not a list, tools not JSON …)
  raises :class:`RowError`, naming the file, the row and the field: the mapping is probably wrong and
  every later row would fail the same way;
* a row whose *content* is unusable (empty prompt or response, turns out of order, an unknown role)
  is skipped and counted by reason; the loader reports the counts as a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from workbench.config.base import WorkbenchError
from workbench.data import records as R
from workbench.data.files import FILE_TYPES, peek_rows
from workbench.data.spec import DEFAULT_COLUMNS, DEFAULT_TAGS, MEDIA_KEYS, DatasetSpec, spec_from_entry


class RowError(WorkbenchError):
    """A row that does not fit the declared format; the message names where and which field."""


class Skip(Exception):
    """A row to leave out, with the reason it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text(value: Any, where: str, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{where}: {field} must be text, got {type(value).__name__} ({_short(value)})")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def _bool(value: Any, where: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RowError(f"{where}: {field} must be true or false, got {_short(value)}")


class RowConverter:
    """Turns the rows of one dataset into records, after checking its column map against the file."""

    def __init__(self, spec: DatasetSpec, available: Iterable[str]):
        self.spec = spec
        self.available = list(available)
        have = set(self.available)
        explicit = spec.explicit_columns
        media = [k for k in MEDIA_KEYS if k in explicit]
        if media:
            raise WorkbenchError(f"dataset {spec.name!r} maps {', '.join(media)}: multimodal data is not supported")
        missing = [f"{k} → {v!r}" for k, v in explicit.items() if v not in have]
        if missing:
            raise WorkbenchError(
                f"dataset {spec.name!r} ({spec.where()}): column(s) not found: {', '.join(missing)}; "
                f"the file has: {', '.join(self.available) or '(no columns)'}"
            )
        # Defaults the file lacks are simply unused; explicit names were checked above.
        self.cols = {k: v for k, v in spec.columns.items() if v in have}
        self.tags = spec.tags
        self.mode = self._mode()

    def _mode(self) -> str:
        spec, cols = self.spec, self.cols
        if spec.formatting == "alpaca":
            if "prompt" not in cols:
                raise WorkbenchError(
                    f"dataset {spec.name!r} ({spec.where()}): the prompt column {spec.columns['prompt']!r} was not "
                    f"found; the file has: {', '.join(self.available) or '(no columns)'}; map it with "
                    f"\"columns\": {{\"prompt\": \"...\"}}"
                )
            if spec.ranking:
                if not (("chosen" in cols and "rejected" in cols) or "response" in cols):
                    raise WorkbenchError(
                        f"dataset {spec.name!r}: a ranking dataset needs chosen and rejected columns, or a response "
                        f"column holding [chosen, rejected]; the file has: {', '.join(self.available)}"
                    )
                return "ranking"
            if "kto_tag" in cols:
                return "kto"
            if "response" not in cols:
                return "text"  # only a prompt column: pre-training text
            return "sft"
        if "messages" not in cols:
            raise WorkbenchError(
                f"dataset {spec.name!r} ({spec.where()}): the messages column {spec.columns['messages']!r} was not "
                f"found; the file has: {', '.join(self.available) or '(no columns)'}"
            )
        if spec.ranking:
            if not ("chosen" in cols and "rejected" in cols):
                raise WorkbenchError(f"dataset {spec.name!r}: a {spec.formatting} ranking dataset needs chosen and "
                                     f"rejected columns; the file has: {', '.join(self.available)}")
            return "ranking"
        return "kto" if "kto_tag" in cols else "sft"

    @property
    def kind(self) -> str:
        """What the data is, for tables: sft, ranking, kto, tools or text."""
        if self.mode == "sft" and "tools" in self.cols:
            return "tools"
        return self.mode

    def used_columns(self) -> dict[str, str]:
        return dict(self.cols)

    # ------------------------------------------------------------------------------------------
    def convert(self, row: dict, where: str) -> R.Record:
        if not isinstance(row, dict):
            raise RowError(f"{where}: expected an object with columns, got {type(row).__name__}")
        system = _text(row.get(self.cols["system"]), where, self.cols["system"]) if "system" in self.cols else None
        system = system or None
        tools = None
        if "tools" in self.cols:
            try:
                tools = R.parse_tools(row.get(self.cols["tools"]))
            except ValueError as exc:
                raise RowError(f"{where}: {self.cols['tools']}: {exc}") from None
        if self.spec.formatting == "alpaca":
            return self._alpaca(row, where, system, tools)
        return self._sharegpt(row, where, system, tools)

    def _alpaca(self, row: dict, where: str, system: str | None, tools) -> R.Record:
        c = self.cols
        prompt = _text(row.get(c["prompt"]), where, c["prompt"])
        query = _text(row.get(c["query"]), where, c["query"]) if "query" in c else ""
        content = "\n".join(p for p in (prompt, query) if p)
        if self.mode == "text":
            if not content.strip():
                raise Skip("empty text")
            return R.Text(content)
        if not content.strip():
            raise Skip("empty prompt")
        messages: list[dict] = []
        if "history" in c and row.get(c["history"]) not in (None, ""):
            history = row[c["history"]]
            if not isinstance(history, list) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in history
            ):
                raise RowError(f"{where}: {c['history']} must be a list of [user, assistant] pairs, "
                               f"got {_short(history)}")
            for user, assistant in history:
                messages.append(R.message("user", _text(user, where, c["history"])))
                messages.append(R.message("assistant", _text(assistant, where, c["history"])))
            if any(not m["content"].strip() for m in messages):
                raise Skip("empty turn in history")
        messages.append(R.message("user", content))
        if self.mode == "ranking":
            chosen, rejected = self._alpaca_pair(row, where)
            return R.Preference(messages, R.message("assistant", chosen), R.message("assistant", rejected),
                                system, tools)
        response = _text(row.get(c["response"]), where, c["response"])
        if not response.strip():
            raise Skip("empty response")
        messages.append(R.message("assistant", response))
        kto = _bool(row.get(c["kto_tag"]), where, c["kto_tag"]) if self.mode == "kto" else None
        return R.Conversation(messages, system, tools, kto)

    def _alpaca_pair(self, row: dict, where: str) -> tuple[str, str]:
        c = self.cols
        if "chosen" in c and "rejected" in c:
            chosen = _text(_message_text(row.get(c["chosen"])), where, c["chosen"])
            rejected = _text(_message_text(row.get(c["rejected"])), where, c["rejected"])
        else:
            value = row.get(c["response"])
            if not (isinstance(value, (list, tuple)) and len(value) >= 2):
                raise RowError(f"{where}: {c['response']} of a ranking dataset must be a list [chosen, rejected], "
                               f"got {_short(value)}")
            chosen, rejected = (_text(v, where, c["response"]) for v in value[:2])
        if not chosen.strip() or not rejected.strip():
            raise Skip("empty chosen or rejected")
        return chosen, rejected

    def _turn(self, item: Any, where: str, field: str, turns: list | None = None) -> tuple[str, dict]:
        """One sharegpt/openai message → (its tag, a canonical message); ``turns``: its conversation, for hints."""
        if not isinstance(item, dict):
            raise RowError(f"{where}: {field} must be a list of message objects, found {_short(item)}")
        t = self.tags
        role_key, content_key = t["role_tag"], t["content_tag"]
        calls = item.get("tool_calls")
        for key, tag_key in ((role_key, "role_tag"), (content_key, "content_tag")):
            if key not in item and not (tag_key == "content_tag" and calls):
                raise RowError(f"{where}: a message in {field} has no {key!r} key (keys: "
                               f"{', '.join(map(str, item))}); set tags.role_tag / tags.content_tag"
                               + _tag_hint(turns or [item], self.spec.formatting))
        tag = item[role_key]
        if tag == t["function_tag"] or (calls and tag == t["assistant_tag"]):
            raw = calls if calls else item.get(content_key)
            try:
                parsed = R.parse_tool_call_value(raw)
            except ValueError as exc:
                raise RowError(f"{where}: {field}: {exc}") from None
            content = _text(item.get(content_key), where, field) if calls else ""
            return tag, R.message("assistant", content, parsed)
        content = _text(item.get(content_key), where, field)
        role = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["observation_tag"]: "tool",
                t["system_tag"]: "system"}.get(tag)
        if role is None:
            known = ", ".join(f"{k}={t[k]!r}" for k in ("user_tag", "assistant_tag", "system_tag", "observation_tag",
                                                         "function_tag"))
            raise Skip(f"unknown role {tag!r} (role tags: {known})")
        return tag, R.message(role, content)

    def _sharegpt(self, row: dict, where: str, system: str | None, tools) -> R.Record:
        c = self.cols
        raw = row.get(c["messages"])
        if not isinstance(raw, list):
            raise RowError(f"{where}: {c['messages']} must be a list of messages, got {_short(raw)}")
        messages = [self._turn(item, where, c["messages"], raw)[1] for item in raw]
        if messages and messages[0]["role"] == "system":
            first = messages.pop(0)
            system = system or first["content"] or None
        if not messages:
            raise Skip("no messages")
        for m in messages:
            if not (m["content"].strip() or m.get("tool_calls")):
                raise Skip("empty message")
        if not valid_order(messages):
            raise Skip("turns out of order")
        if self.mode == "ranking":
            if messages[-1]["role"] == "assistant":
                raise Skip("ranking prompt ends with an assistant turn")
            chosen = self._pair_message(row.get(c["chosen"]), where, c["chosen"])
            rejected = self._pair_message(row.get(c["rejected"]), where, c["rejected"])
            return R.Preference(messages, chosen, rejected, system, tools)
        if messages[-1]["role"] != "assistant":
            raise Skip("no final assistant turn")
        kto = _bool(row.get(c["kto_tag"]), where, c["kto_tag"]) if self.mode == "kto" else None
        return R.Conversation(messages, system, tools, kto)

    def _pair_message(self, value: Any, where: str, field: str) -> dict:
        if isinstance(value, str):
            if not value.strip():
                raise Skip("empty chosen or rejected")
            return R.message("assistant", value)
        _, msg = self._turn(value, where, field)
        if msg["role"] != "assistant":
            raise Skip("chosen/rejected is not an assistant message")
        if not (msg["content"].strip() or msg.get("tool_calls")):
            raise Skip("empty chosen or rejected")
        return msg


def _tag_hint(turns: list, formatting: str) -> str:
    """' (the messages look like ...)': the role/content keys and role values detected in ``turns``."""
    found = detect_turn_tags([m for m in turns if isinstance(m, dict)])["tags"]
    if "role_tag" not in found or "content_tag" not in found:
        return ""
    openai = DEFAULT_TAGS["openai"]
    if formatting != "openai" and all(found.get(k) == openai[k] for k in ("role_tag", "content_tag")) and all(
            found.get(k) in (None, openai[k]) for k in ("user_tag", "assistant_tag", "system_tag")):
        return " (the messages look like OpenAI messages: choose formatting openai)"
    order = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "observation_tag", "function_tag")
    return " (the messages look like " + ", ".join(f"{k}={found[k]!r}" for k in order if k in found) + ")"


def valid_order(messages: list[dict]) -> bool:
    """user first; an assistant answers a user or tool turn; tool results follow an assistant turn."""
    previous = None
    for m in messages:
        role = m["role"]
        if role == "user":
            ok = previous in (None, "assistant")
        elif role == "assistant":
            ok = previous in ("user", "tool")
        elif role == "tool":
            # After any assistant turn, as LLaMA-Factory accepts (some data writes calls as plain text).
            ok = previous in ("tool", "assistant")
        else:
            ok = False
        if not ok:
            return False
        previous = role
    return True


def _message_text(value: Any) -> Any:
    """Chosen/rejected columns hold text, or sometimes a message object or a one-message list."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1]
    if isinstance(value, dict):
        for key in ("content", "value", "text"):
            if key in value:
                return value[key]
    return value


# ---- detection ---------------------------------------------------------------------------------

PROMPT_GUESSES = ("instruction", "prompt", "question", "query", "input", "text", "content", "article", "source")
RESPONSE_GUESSES = ("output", "response", "answer", "completion", "target", "summary", "highlights", "label_text")
QUERY_GUESSES = ("input", "context")
SYSTEM_GUESSES = ("system", "system_prompt")
MESSAGE_GUESSES = ("conversations", "messages", "conversation", "dialog", "chat", "completion")
# Keys of one turn, and role values, as commonly spelt (compared case-insensitively).
ROLE_KEY_GUESSES = ("from", "role", "speaker", "author", "sender", "who", "participant", "user_type")
CONTENT_KEY_GUESSES = ("value", "content", "text", "message", "utterance", "msg", "body", "turn")
ROLE_VALUE_GUESSES = {
    "user_tag": ("human", "user", "usr", "customer", "client", "person", "questioner", "prompter"),
    "assistant_tag": ("gpt", "assistant", "bot", "model", "ai", "chatbot", "agent", "answerer", "chatgpt", "llm"),
    "system_tag": ("system", "sys"),
    "observation_tag": ("observation", "tool", "function_response", "tool_response", "ipython", "environment"),
    "function_tag": ("function_call", "function", "tool_call", "tool_calls"),
}
_ROLE_VALUE_WORDS = 8  # a key whose values are a handful of short words is a role key


def message_turns(rows: list[dict], msg_col: str) -> list[dict]:
    """Every message object in column ``msg_col`` of ``rows``."""
    return [m for r in rows if isinstance(r, dict) and isinstance(r.get(msg_col), list)
            for m in r[msg_col] if isinstance(m, dict)]


def _pick_key(keys: list[str], guesses: Iterable[str], exclude: Iterable[str] = ()) -> str | None:
    lower = {k.lower(): k for k in keys if k not in set(exclude)}
    return next((lower[g] for g in guesses if g in lower), None)


def detect_turn_tags(turns: list[dict]) -> dict[str, Any]:
    """Which key of a conversation turn holds the role and which the text, and which role values mean
    user / assistant / system / tool — from the turns themselves.

    Returns ``{"tags": {...all found TAG_KEYS...}, "unmapped": [role values left over], "notes": [...]}``.
    Common spellings are tried first; otherwise a key holding a handful of short repeated words is the
    role key, the longest text the content, and two unknown role values alternate as user then assistant.
    """
    out: dict[str, Any] = {"tags": {}, "unmapped": [], "notes": []}
    if not turns:
        return out
    counts: dict[str, int] = {}
    for t in turns:
        for k in t:
            counts[k] = counts.get(k, 0) + 1
    keys = [k for k, n in counts.items() if n * 2 >= len(turns)]  # keys most turns have
    strings = {k: [t[k] for t in turns if isinstance(t.get(k), str)] for k in keys}
    role_key = _pick_key(keys, ROLE_KEY_GUESSES)
    if role_key is None:
        words = [k for k in keys if strings[k] and len(strings[k]) * 2 >= len(turns)
                 and len(set(strings[k])) <= _ROLE_VALUE_WORDS and max(map(len, strings[k])) <= 32]
        repeated = [k for k in words if len(set(strings[k])) < len(strings[k]) or len(turns) <= 2]
        role_key = min(repeated or words, key=lambda k: len(set(strings[k])), default=None)
    content_key = _pick_key(keys, CONTENT_KEY_GUESSES, exclude=(role_key,))
    if content_key is None:
        texts = [k for k in keys if k != role_key and strings[k]]
        content_key = max(texts, key=lambda k: sum(map(len, strings[k])) / len(strings[k]), default=None)
    if role_key is None:
        out["notes"].append(f"could not tell which key of a turn holds the role (keys: {', '.join(keys)}); "
                            "set the role tag")
        return out
    out["tags"]["role_tag"] = role_key
    if content_key is None:
        out["notes"].append(f"could not tell which key of a turn holds the text (keys: {', '.join(keys)}); "
                            "set the content tag")
    else:
        out["tags"]["content_tag"] = content_key
    values: list[str] = []
    for t in turns:
        v = t.get(role_key)
        if isinstance(v, str) and v not in values:
            values.append(v)
    left = list(values)
    for tag_key, guesses in ROLE_VALUE_GUESSES.items():
        by_lower = {v.lower(): v for v in reversed(left)}  # the first spelling seen wins
        found = next((by_lower[g] for g in guesses if g in by_lower), None)
        if found is not None:
            out["tags"][tag_key] = found
            left.remove(found)
    need = [k for k in ("user_tag", "assistant_tag") if k not in out["tags"]]
    if need and len(left) == len(need):
        # Unknown names: the one heard first (``left`` keeps the order of appearance) is the user.
        out["tags"].update(zip(need, left))
        out["notes"].append("role values " + ", ".join(f"{out['tags'][k]!r} → {k.split('_')[0]}" for k in need)
                            + " were guessed from the order of the turns; check the role tags")
        left = []
    out["unmapped"] = left
    if left:
        out["notes"].append(f"role value(s) {', '.join(map(repr, left))} match no role tag; rows with such turns "
                            "are skipped unless a role tag is set to it")
    return out


def detect_format(columns: list[str], rows: list[dict], notes: list[str] | None = None) -> dict[str, Any]:
    """Guess a dataset_info.json entry (formatting, ranking, columns, tags) from columns and sample rows.

    What the guess could not settle, or settled from weak evidence, is appended to ``notes``.
    """
    first = rows[0] if rows else {}
    entry: dict[str, Any] = {}
    lower = {c.lower(): c for c in columns}

    def pick(guesses, exclude=()) -> str | None:
        for g in guesses:
            if g in lower and lower[g] not in exclude:
                return lower[g]
        return None

    msg_col = next((c for c in columns if isinstance(first.get(c), list) and first[c]
                    and isinstance(first[c][0], dict)), None)
    if msg_col is None:
        msg_col = pick(MESSAGE_GUESSES) if pick(MESSAGE_GUESSES) and isinstance(first.get(pick(MESSAGE_GUESSES)),
                                                                                   list) else None
    if msg_col is not None:
        turns = message_turns(rows, msg_col)
        found = detect_turn_tags(turns)
        turn_tags = found["tags"]
        roles = {m.get(turn_tags["role_tag"]) for m in turns} if "role_tag" in turn_tags else set()
        openai_like = (turn_tags.get("role_tag") == "role" and turn_tags.get("content_tag") == "content"
                       and roles <= {"system", "user", "assistant", "tool"})
        entry["formatting"] = "openai" if openai_like else "sharegpt"
        if notes is not None:
            notes.extend(f"{msg_col}: {n}" for n in found["notes"])
        columns_map: dict[str, str] = {"messages": msg_col}
        tags: dict[str, str] = {}
        if not openai_like:
            defaults = DEFAULT_TAGS["sharegpt"]
            tags = {k: v for k, v in turn_tags.items() if v != defaults[k]}
        for key, guesses in (("system", SYSTEM_GUESSES), ("tools", ("tools",))):
            col = pick(guesses)
            if col:
                columns_map[key] = col
        if "chosen" in lower and "rejected" in lower:
            entry["ranking"] = True
            columns_map.update(chosen=lower["chosen"], rejected=lower["rejected"])
        kto = next((lower[k] for k in ("kto_tag", "label") if k in lower and isinstance(first.get(lower[k]), bool)),
                   None)
        if kto:
            columns_map["kto_tag"] = kto
        defaults = DEFAULT_COLUMNS[entry["formatting"]]
        entry["columns"] = {k: v for k, v in columns_map.items() if defaults.get(k) != v or k == "messages"}
        if tags:
            entry["tags"] = tags
        return entry

    entry["formatting"] = "alpaca"
    cols: dict[str, str] = {}
    prompt = pick(PROMPT_GUESSES)
    if prompt:
        cols["prompt"] = prompt
    if "chosen" in lower and "rejected" in lower:
        entry["ranking"] = True
        cols.update(chosen=lower["chosen"], rejected=lower["rejected"])
    else:
        response = pick(RESPONSE_GUESSES, exclude=(prompt,))
        if response:
            cols["response"] = response
            if isinstance(first.get(response), list) and len(first[response]) == 2:
                entry["ranking"] = True
    query = pick(QUERY_GUESSES, exclude=(prompt, cols.get("response")))
    if query:
        cols["query"] = query
    for key, guesses in (("system", SYSTEM_GUESSES), ("history", ("history",)), ("tools", ("tools",))):
        col = pick(guesses)
        if col:
            cols[key] = col
    kto = next((lower[k] for k in ("kto_tag", "label") if k in lower and isinstance(first.get(lower[k]), bool)),
               None)
    if kto:
        cols["kto_tag"] = kto
    entry["columns"] = cols
    return entry


def detect_spec(path: str | Path, name: str | None = None) -> DatasetSpec:
    """A spec for a data file that is not registered: read a few rows and guess the format."""
    path = Path(path).expanduser().resolve()
    if path.suffix.lower() not in FILE_TYPES:
        raise WorkbenchError(f"{path}: unsupported file type {path.suffix!r}; use one of "
                             f"{', '.join(sorted(FILE_TYPES))}")
    columns, rows = peek_rows(path, 20)
    entry = {"file_name": path.name, **detect_format(columns, rows)}
    return spec_from_entry(name or path.stem, entry, path.parent)
