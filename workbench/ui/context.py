"""What the tabs share: the model manager and the top bar's components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from workbench.infer.session import ModelManager


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
            import gradio as gr

            state = gr.State(initial)
            self.extras[key] = state
        return state

    def model_inputs(self) -> list:
        """The top-bar components that define the model, in ModelArgs order (for event inputs)."""
        return [self.model, self.dtype, self.quantization]
