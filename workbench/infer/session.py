"""The model the app has loaded (one per process): load, unload, and what is loaded now."""

from __future__ import annotations

import gc
import threading

from workbench.config.model import ModelArgs
from workbench.models.loader import LoadedModel, load_model


class ModelManager:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.loaded: LoadedModel | None = None
        self.args: ModelArgs | None = None

    @property
    def lock(self) -> threading.RLock:
        """Held while generating, so a load or unload never pulls the model from under a request."""
        return self._lock

    def load(self, args: ModelArgs, adapters: dict[str, str] | None = None) -> LoadedModel:
        with self._lock:
            self.unload()
            self.loaded = load_model(args, adapters=adapters)
            self.args = args
            return self.loaded

    def unload(self) -> None:
        with self._lock:
            if self.loaded is None:
                return
            self.loaded = None
            self.args = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    def current(self) -> LoadedModel | None:
        return self.loaded

    def status(self) -> str:
        loaded = self.loaded
        if loaded is None:
            return "No model loaded."
        return f"Loaded {loaded.describe()} in {loaded.load_seconds:.1f}s."
