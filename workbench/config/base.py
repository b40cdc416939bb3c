"""Options are declared once, as dataclass fields; the CLI, the Gradio forms, YAML and validation
are generated from them.

A field is declared with :func:`option`: its default, a one-line help text, and optionally choices,
a numeric range, a group (where the UI places it) and the form's labels (English and Chinese). Cross-field
rules live in the dataclass's ``__post_init__`` and raise :class:`OptionError`, which names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import json
import math
import re
import types
import typing
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

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
    label: str | None = None,
    label_zh: str | None = None,
    help_zh: str | None = None,
    ui: bool = True,
    default_factory: Any = MISSING,
    **extra: Any,
) -> Any:
    """Declare an option field with its documentation and constraints in one place.

    ``label``/``label_zh``: what the form calls the option, written as a person would (not derived from the
    name). ``extra`` keys go into the field's metadata as they are (e.g. ``cli_group``: the ``--help`` section
    the flag is listed in, when it is not the class's own; ``step``: the number box's step).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "min": min,
        "max": max,
        "group": group,
        "label": label,
        "label_zh": label_zh,
        "help_zh": help_zh,
        "ui": ui,
        **extra,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another program's name for an option (Qwen's ``model_max_length`` for ``cutoff_len``, ...).

    Options classes declare theirs in a class attribute ``ALIASES = {name: Alias(...)}``; the CLI gets a
    ``--name`` flag for each, and YAML/CLI mappings are rewritten to the target option before validation
    (:func:`resolve_aliases`). ``target`` may belong to another options class of the same command.
    ``convert`` turns the alias's value into the target's (returning :data:`UNSET` sets nothing);
    ``flag``: a bare ``--name`` means true; ``nargs="+"``: the value may be several words.
    """

    target: str
    help: str
    convert: Callable[[Any], Any] | None = None
    flag: bool = False
    nargs: str | None = None


UNSET: Any = object()  # an Alias.convert result: the alias's value sets nothing


def aliases_of(cls: type) -> dict[str, Alias]:
    return dict(getattr(cls, "ALIASES", None) or {})


def resolve_aliases(classes: Iterable[type], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every alias replaced by its target option (value converted), in the same order.

    An alias whose target is given too, with a different value, is an error naming the alias; a bad value
    is reported under the alias's name (the one the user typed).
    """
    classes = list(classes)
    aliases: dict[str, Alias] = {}
    owners: dict[str, type] = {}
    for c in classes:
        aliases.update(aliases_of(c))
        for name in option_fields(c):
            owners.setdefault(name, c)
    if not any(key in aliases and key not in owners for key in values):
        return dict(values)
    out: dict[str, Any] = {}
    for key, value in values.items():
        alias = aliases.get(key)
        if alias is None or key in owners:
            out[key] = value
            continue
        try:
            converted = alias.convert(value) if alias.convert is not None else value
        except (TypeError, ValueError) as exc:
            raise OptionError(key, f"invalid value {value!r} ({exc})") from None
        if converted is UNSET:
            continue
        owner = owners.get(alias.target)
        if owner is None:
            raise OptionError(key, f"stands for {alias.target}, which this command does not have")
        try:
            mine = coerce(owner, alias.target, converted)
        except OptionError as exc:
            raise OptionError(key, f"(= {alias.target}) {str(exc).split(': ', 1)[-1]}") from None
        if alias.target in values:  # both names given: fine if they agree (the target's own entry is kept)
            if coerce(owner, alias.target, values[alias.target]) != mine:
                raise OptionError(key, f"is another name for {alias.target}, which is also given, with a different "
                                       f"value ({values[alias.target]!r})")
            continue
        if alias.target in out:  # two aliases of one option
            if coerce(owner, alias.target, out[alias.target]) != mine:
                raise OptionError(key, f"stands for {alias.target}, which another alias sets to a different value")
            continue
        out[alias.target] = converted
    return out


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
    """Convert a value from YAML, the CLI or a form into the field's type; raise OptionError if it can't.

    Every number must be finite: NaN and ±infinity (``nan``, ``inf``, YAML's ``.nan``/``.inf``, a form's
    number box) are refused here, for every float and int option of every options class.
    """
    f = option_fields(cls)[name]
    tp, optional = _base_type(resolved_hints(cls)[name])
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional or f.default is None:
            return None
        raise OptionError(name, "a value is required")
    if tp in (int, float) and is_non_finite(value):
        raise OptionError(name, f"{str(value).strip()} is not a finite number (NaN and infinity are not accepted)")
    try:
        if tp is bool:
            value = parse_bool(value)
        elif tp is int:
            if isinstance(value, bool):
                raise ValueError("expected a whole number, got a boolean")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected a whole number, got {value}")
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
            value = _coerce_mapping(value, path_ok=bool(f.metadata.get("path_ok")))
        elif tp is str:
            if isinstance(value, (list, tuple)):  # YAML lists for comma-separated options
                value = ",".join(str(v) for v in value)
            value = str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OptionError(name, f"invalid value {value!r} ({exc})") from None
    check_constraints(f, value)
    return value


def is_non_finite(value: Any) -> bool:
    """True for NaN and ±infinity, as numbers or as text (``nan``, ``-inf``, ``1e999``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) and not hasattr(value, "__float__"):
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _coerce_mapping(value: Any, *, path_ok: bool) -> Any:
    """A mapping option: a mapping (YAML), or its JSON/YAML text (``'{"min_lr": 1e-6}'`` on the command line).
    With ``path_ok`` other text is kept as it is: the path of a JSON file, which the consumer reads."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                loaded = json.loads(text)
            except ValueError:
                try:  # YAML's flow style too: {min_lr: 1.0e-6}
                    loaded = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise ValueError("not a valid JSON object") from None
            if isinstance(loaded, dict):
                return loaded
        elif path_ok and text:
            return text
    raise ValueError("expected a mapping such as '{\"key\": 1}'" + (" or the path of a JSON file" if path_ok else ""))


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


@functools.lru_cache(maxsize=None)
def resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls) if f.init}


def _mirror_type(tp: Any) -> tuple[Any, tuple[Any, ...] | None, bool] | None:
    """Another dataclass's field type → (our annotation, choices, path_ok), or None when it cannot be text.

    Enums become their values as choices; ``dict | str`` becomes a mapping that may also be a JSON file path;
    ``str | list[str]`` stays text.
    """
    if isinstance(tp, str):
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (tp,)
    optional = type(None) in args
    kinds = []
    for arg in args:
        if arg is type(None) or typing.get_origin(arg) is typing.Literal:
            continue
        kinds.append(typing.get_origin(arg) or arg)
    choices = None
    if any(k is dict for k in kinds):
        base, path_ok = dict, str in kinds
    elif any(isinstance(k, type) and issubclass(k, enum.Enum) for k in kinds):
        enum_cls = next(k for k in kinds if isinstance(k, type) and issubclass(k, enum.Enum))
        base, path_ok, choices = str, False, tuple(m.value for m in enum_cls)
    elif str in kinds or (len(kinds) > 1 and any(k in (list, tuple) for k in kinds)):
        base, path_ok = str, False
    elif len(kinds) == 1 and kinds[0] in (bool, int, float, list):
        base, path_ok = kinds[0], False
    else:
        return None
    annotation = list[str] if base is list else base
    return (annotation | None if optional else annotation), choices, path_ok


def mirror_fields(source: type, *, skip: Iterable[str] = (), paths: Iterable[str] = (),
                  **metadata: Any) -> list[tuple[str, Any, Any]]:
    """Option fields that mirror another library's dataclass: its type, default and help text, field by field
    (for :func:`dataclasses.make_dataclass`). Fields in ``skip``, without a default, or whose type cannot be
    written as text are left out; ``metadata`` (group, ui, cli_group, ...) is added to every field. A mapping
    field named in ``paths`` may also be given as the path of a JSON file."""
    skip, paths = set(skip), set(paths)
    out = []
    for f in fields(source):
        if not f.init or f.name in skip:
            continue
        mirrored = _mirror_type(f.type)
        if mirrored is None:
            continue
        annotation, choices, path_ok = mirrored
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            continue
        if isinstance(default, enum.Enum):
            default = default.value
        if default is None and not (typing.get_origin(annotation) in (typing.Union, types.UnionType)):
            annotation = annotation | None
        if f.metadata.get("choices") is not None and choices is None:
            choices = tuple(f.metadata["choices"])
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        kwargs = dict(metadata)
        if path_ok and f.name in paths:
            kwargs["path_ok"] = True
        if isinstance(default, (list, dict)):
            spec = option(help=help_text, choices=choices, default_factory=lambda d=default: type(d)(d), **kwargs)
        else:
            spec = option(default, help_text, choices=choices, **kwargs)
        out.append((f.name, annotation, spec))
    return out


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
    values = resolve_aliases([cls], values)
    known = option_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise OptionError(unknown[0], f"unknown option(s) {', '.join(unknown)} for {cls.__name__}")
    return cls(**{k: v for k, v in values.items()})


def split_mapping(
    classes: Iterable[type], values: Mapping[str, Any], ignored: Mapping[str, str] | None = None
) -> tuple[list[Any], list[str]]:
    """Distribute keys over several option dataclasses (a field name may appear in several).

    Aliases (:class:`Alias`) are first rewritten to their target options. Keys listed in ``ignored``
    (name → reason) are dropped with a warning line; other unknown keys raise an OptionError that names
    every one of them.
    """
    classes = list(classes)
    values = resolve_aliases(classes, values)
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

# A negative number, in any notation a float option takes (``-1e-4``, ``-.5``, ``-inf``): argparse reads
# ``--learning_rate -1e-4`` as a flag followed by an unknown option ``-1e-4`` unless it knows the value is a number.
NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^-(?:inf|infinity|nan)$", re.IGNORECASE)


def allow_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let a negative number be the value of a flag (``--learning_rate -1e-4``, ``--freeze_trainable_layers -2``).

    argparse decides per parser which strings "look like negative numbers" (and so are values, not flags) with
    a pattern that knows only ``-1`` and ``-0.5``; this widens it to scientific notation and ``-inf``/``-nan``
    (which the options then refuse by name). None of our parsers has a flag that looks like a number.
    """
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = NEGATIVE_NUMBER  # noqa: SLF001 - argparse has no public hook for this


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add ``--name`` flags for every option of ``cls`` (and its aliases); defaults are left to the dataclass.

    Flags default to ``argparse.SUPPRESS`` so that only what the user typed reaches
    :func:`from_mapping`, which lets YAML values and CLI overrides merge cleanly. A field whose metadata
    names a ``cli_group`` is listed under that heading in ``--help`` instead of the class's.
    """
    allow_negative_numbers(parser)
    skip = set(skip)
    hints = resolved_hints(cls)
    existing = {a.dest for a in parser._actions}
    groups = {g.title: g for g in parser._action_groups}
    group = groups.get(cls.__name__) or parser.add_argument_group(cls.__name__)
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
            kwargs["metavar"] = ("|".join(map(str, meta["choices"])) if meta.get("choices")
                                 else "JSON" if tp is dict else tp.__name__.upper())
        target = group
        if meta.get("cli_group"):
            title = meta["cli_group"]
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        target.add_argument(f"--{name}", **kwargs)
    for name, alias in aliases_of(cls).items():
        if name in skip or name in existing:
            continue
        kwargs = {"dest": name, "default": argparse.SUPPRESS,
                  "help": f"{alias.help} (sets --{alias.target})".replace("%", "%%")}
        if alias.flag:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        else:
            kwargs.update(metavar="VALUE", **({"nargs": alias.nargs} if alias.nargs else {}))
        group.add_argument(f"--{name}", **kwargs)


def option_flags(values: Mapping[str, Any], flag_names: Mapping[str, str] | None = None) -> list[str]:
    """``{key: value}`` → ``["--key", "value", ...]`` that :func:`coerce` reads back to the same values:
    ``true``/``false``, ``none``, a list comma-separated. ``flag_names`` gives a key another flag than ``--key``."""
    flags: list[str] = []
    for key, value in values.items():
        if value is None:
            text = "none"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        flags += [(flag_names or {}).get(key, f"--{key}"), text]
    return flags
