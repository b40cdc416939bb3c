"""What the tabs share: the model manager, the top bar's components, the shared states and the error text."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.model import ModelArgs, adapter_name_for
from workbench.export.merge import list_exported_models
from workbench.infer.session import ModelManager
from workbench.jobs.runs import list_adapters
from workbench.models import registry
from workbench.ui.forms import form_value

# The counters tabs bump when they created something on disk; the other tabs refresh their pickers on .change.
DATASETS_VERSION = "datasets_version"  # a dataset was registered (Train's dataset picker)
RUNS_VERSION = "runs_version"          # a training run finished or was deleted (adapter pickers)
ADAPTERS_VERSION = "adapters_version"  # an export or a combined adapter finished (Chat, Evaluate)


@dataclass
class AppContext:
    manager: ModelManager
    # Filled in by the top bar, before the tabs are built:
    model: Any = None            # gr.Dropdown: alias, local directory or hub id (free text allowed)
    template: Any = None         # gr.Dropdown: chat template name ("auto" = the model's default)
    dtype: Any = None            # gr.Dropdown: ModelArgs.infer_dtype
    quantization: Any = None     # gr.Dropdown: none / 4 / 8
    status: Any = None           # gr.Markdown: what is loaded
    load_button: Any = None
    unload_button: Any = None
    # Tabs that change what exists on disk (a finished run, a merged model) call these to refresh pickers.
    refreshers: list[Callable[[], None]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

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
        """The top-bar components that define the model, in ModelArgs order (for event inputs)."""
        return [self.model, self.dtype, self.quantization]

    def version(self, key: str):
        """The ``*_version`` counter state ``key`` (see :meth:`shared_state`)."""
        return self.shared_state(key, 0)


def error_text(exc: Exception, mark: bool = True) -> str:
    """What a tab shows for a failed action: our own errors as written (they name the file, row or option);
    anything else with its type, and its traceback in the server log."""
    if isinstance(exc, WorkbenchError):
        text = str(exc)
    else:
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}"
    return f"❌ {text}" if mark else text

def model_choices() -> list[str]:
    """The registry's models, then the merged models under the exports folder."""
    return list(registry.MODELS) + list_exported_models()  # merged models next to the registry's

def model_args_from(model: str, dtype: str, quantization: str) -> ModelArgs:
    quant = form_value(quantization)
    return ModelArgs(model_name_or_path=(model or "").strip(), infer_dtype=dtype or "auto",
                     quantization_bit=int(quant) if quant else None)

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
