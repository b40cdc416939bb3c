"""Training presets: YAML files of options (the same keys as a training config).

The project's ``presets/`` ships recipes (the CPU quick start, the seed runs); the user's own go to
``$WORKBENCH_HOME/presets``. A user preset with the same name as a project preset is listed as
``name (mine)``, so neither hides the other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from workbench.config.base import OptionError, WorkbenchError, dump_yaml, load_yaml
from workbench.paths import project_presets_dir, user_presets_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MINE = " (mine)"
# Run-specific keys that a recipe must not carry over to the next run.
RUN_KEYS = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir")


def list_presets() -> dict[str, Path]:
    """Display name → file, project presets first."""
    out: dict[str, Path] = {}
    for folder, suffix in ((project_presets_dir(), ""), (user_presets_dir(), MINE)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            name = path.stem
            out[name + suffix if suffix and name in out else name] = path
    return out


def load_preset(name: str) -> tuple[dict[str, Any], Path]:
    """The preset's options (validated by the caller) and its file."""
    presets = list_presets()
    if name not in presets:
        raise WorkbenchError(f"no preset named {name!r}; presets: {', '.join(presets) or 'none'}")
    path = presets[name]
    values = load_yaml(path)
    known = _known_keys()
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise OptionError(unknown[0], f"{path}: unknown option(s) {', '.join(unknown)}")
    from workbench.config.base import resolve_aliases
    from workbench.train.plan import train_option_classes

    return resolve_aliases(train_option_classes(), values), path  # the form knows options, not their aliases


def save_preset(name: str, values: dict[str, Any]) -> Path:
    """Write the user's preset ``name`` (replacing an older one of theirs); returns the file."""
    name = (name or "").strip()
    if name.endswith(MINE):
        name = name[: -len(MINE)]
    if not _NAME.match(name):
        raise WorkbenchError(f"preset name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                             "(no path separators, at most 64 characters)")
    values = {k: v for k, v in values.items() if k not in RUN_KEYS}
    folder = user_presets_dir()
    path = folder / f"{name}.yaml"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(f"# Workbench training preset {name}\n" + dump_yaml(values), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise WorkbenchError(f"cannot write preset {path}: {exc.strerror or exc}") from None
    return path


def _known_keys() -> set[str]:
    from workbench.config.base import aliases_of, option_fields
    from workbench.config.train import IGNORED_KEYS
    from workbench.train.plan import train_option_classes

    keys = set(IGNORED_KEYS)
    for cls in train_option_classes():
        keys |= set(option_fields(cls)) | set(aliases_of(cls))  # Qwen's/HF's names too (model_max_length)
    return keys
