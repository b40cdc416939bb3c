"""Options are declared once, as dataclass fields; the CLI, the Gradio forms, YAML and validation
are generated from them.

A field is declared with :func:`option`: its default, a one-line help text, and optionally choices,
a numeric range, a group (where the UI places it) and a Chinese label. Cross-field rules live in the
dataclass's ``__post_init__`` and raise :class:`OptionError`, which names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class WorkbenchError(Exception):
    """An error that is the user's to fix; faces print its message without a traceback."""


class OptionError(WorkbenchError, ValueError):
    """A bad option value; ``option`` names the field so the CLI and the UI can point at it."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"{option}: {message}")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Iterable[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    group: str = "basic",
    label_zh: str | None = None,
    help_zh: str | None = None,
    ui: bool = True,
    default_factory: Any = MISSING,
) -> Any:
    """Declare an option field with its documentation and constraints in one place."""
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "min": min,
        "max": max,
        "group": group,
        "label_zh": label_zh,
        "help_zh": help_zh,
        "ui": ui,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _base_type(tp: Any) -> tuple[type, bool]:
    """Return (scalar type, optional) for annotations such as ``int``, ``str | None``, ``list[str]``."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return list, optional
    if origin is dict:
        return dict, optional
    if origin is typing.Literal:
        return str, optional
    return tp, optional


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a value from YAML, the CLI or a form into the field's type; raise OptionError if it can't."""
    f = option_fields(cls)[name]
    tp, optional = _base_type(resolved_hints(cls)[name])
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional or f.default is None:
            return None
        raise OptionError(name, "a value is required")
    try:
        if tp is bool:
            value = parse_bool(value)
        elif tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected a whole number, got {value}")
            if isinstance(value, bool):
                raise ValueError("expected a whole number, got a boolean")
            value = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError("expected a number, got a boolean")
            value = float(value)
        elif tp is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            else:
                value = list(value)
        elif tp is dict:
            if not isinstance(value, dict):
                raise ValueError(f"expected a mapping, got {type(value).__name__}")
        elif tp is str:
            if isinstance(value, (list, tuple)):  # YAML lists for comma-separated options
                value = ",".join(str(v) for v in value)
            value = str(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(name, f"invalid value {value!r} ({exc})") from None
    check_constraints(f, value)
    return value


def check_constraints(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise OptionError(f.name, f"{value!r} is not one of: {', '.join(map(str, choices))}")
    if meta.get("min") is not None and isinstance(value, (int, float)) and value < meta["min"]:
        raise OptionError(f.name, f"{value} is below the minimum {meta['min']}")
    if meta.get("max") is not None and isinstance(value, (int, float)) and value > meta["max"]:
        raise OptionError(f.name, f"{value} is above the maximum {meta['max']}")


def resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls) if f.init}


class Options:
    """Mixin for option dataclasses: validation of every field plus the class's own rules."""

    def __post_init__(self) -> None:
        for name, f in option_fields(type(self)).items():
            setattr(self, name, coerce(type(self), name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Cross-field rules; override and raise OptionError naming the option."""

    def to_dict(self, non_default_only: bool = False) -> dict[str, Any]:
        out = {}
        for name, f in option_fields(type(self)).items():
            value = getattr(self, name)
            if non_default_only:
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                if value == default:
                    continue
            out[name] = value
        return out


def from_mapping(cls: type, values: Mapping[str, Any]) -> Any:
    """Build one option dataclass from a mapping; unknown keys are an error naming them."""
    known = option_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise OptionError(unknown[0], f"unknown option(s) {', '.join(unknown)} for {cls.__name__}")
    return cls(**{k: v for k, v in values.items()})


def split_mapping(
    classes: Iterable[type], values: Mapping[str, Any], ignored: Mapping[str, str] | None = None
) -> tuple[list[Any], list[str]]:
    """Distribute keys over several option dataclasses (a field name may appear in several).

    Keys listed in ``ignored`` (name → reason) are dropped with a warning line; other unknown keys
    raise an OptionError that names every one of them.
    """
    classes = list(classes)
    owned: dict[type, dict[str, Any]] = {c: {} for c in classes}
    unknown, warnings = [], []
    for key, value in values.items():
        targets = [c for c in classes if key in option_fields(c)]
        if targets:
            for c in targets:
                owned[c][key] = value
        elif ignored and key in ignored:
            warnings.append(f"ignoring option {key!r}: {ignored[key]}")
        else:
            unknown.append(key)
    if unknown:
        raise OptionError(unknown[0], f"unknown option(s): {', '.join(sorted(unknown))}")
    return [c(**owned[c]) for c in classes], warnings


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise WorkbenchError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a mapping of option: value at the top level")
    return data


def dump_yaml(values: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(values), sort_keys=False, allow_unicode=True)


# ---- CLI generation -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add ``--name`` flags for every option of ``cls``; defaults are left to the dataclass.

    Flags default to ``argparse.SUPPRESS`` so that only what the user typed reaches
    :func:`from_mapping`, which lets YAML values and CLI overrides merge cleanly.
    """
    skip = set(skip)
    hints = resolved_hints(cls)
    existing = {a.dest for a in parser._actions}
    group = parser.add_argument_group(cls.__name__)
    for name, f in option_fields(cls).items():
        if name in skip or name in existing:
            continue
        tp, _ = _base_type(hints[name])
        meta = f.metadata
        default = f.default if f.default is not MISSING else "(computed)"
        help_text = f"{meta.get('help', '')} (default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            # `--fp16` alone means true; `--fp16 false` is accepted too (LLaMA-Factory style).
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        else:
            kwargs["metavar"] = "|".join(map(str, meta["choices"])) if meta.get("choices") else tp.__name__.upper()
        group.add_argument(f"--{name}", **kwargs)
