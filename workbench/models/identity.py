"""Was this adapter trained on that base model? One answer for chat, evaluation and export.

One model goes by many names: a registry alias, its hub id, a local directory (a snapshot, or a copy named
like the hub repository), typed with different case or a trailing slash. Two names mean the same model when
they share one of the identities below. An adapter names its base in its run record (``workbench_run.json``,
also written for an adapter made by merge-adapters) and in PEFT's ``adapter_config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workbench.models.adapters import read_adapter_config
from workbench.models.catalog import lookup
from workbench.rundir import RUN_RECORD


def _identities(name: str | None) -> set[str]:
    """Ways to recognise one model: the name itself, registry alias, resolved local path, directory name."""
    if not name:
        return set()
    name = str(name).strip().rstrip("/")
    out = {"name:" + name.lower()}
    info = lookup(name)
    if info is not None:
        out.add("alias:" + info.alias)
    path = Path(name).expanduser()
    if path.exists():
        out.add("path:" + os.path.realpath(path))
    if "/" in name or os.sep in name:
        out.add("tail:" + name.rsplit("/", 1)[-1].lower())
    return out


def same_model(name: str | None, *others: str | None) -> bool:
    """Whether ``name`` and any of ``others`` mean one model."""
    return bool(_identities(name) & set().union(*(_identities(n) for n in others)))


def adapter_trained_on(path: str | Path) -> list[str]:
    """The base model(s) an adapter says it was trained on: our run record, then PEFT's config."""
    names = []
    run_file = Path(path).expanduser() / RUN_RECORD
    if run_file.is_file():
        try:
            base = json.loads(run_file.read_text(encoding="utf-8")).get("base_model")
        except (ValueError, AttributeError):
            base = None
        if base:
            names.append(str(base))
    base = read_adapter_config(path).get("base_model_name_or_path")
    if base:
        names.append(str(base))
    return names


def other_base(path: str | Path, *models: str | None) -> str | None:
    """The base model adapter ``path`` records when it is none of ``models`` (names or paths of one model);
    None when it matches or records nothing. Also checks the directory (config + weights present)."""
    trained_on = adapter_trained_on(path)
    if not trained_on:
        return None
    return None if any(same_model(base, *models) for base in trained_on) else trained_on[0]
