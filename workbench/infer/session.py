"""The model the app has loaded (one per process): load, unload, attach/detach named adapters, and what
is loaded now. Adapters are checked against the loaded base (the model they were trained on, and
their tensor shapes) before they are attached, unmerged."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

from workbench.config.base import WorkbenchError
from workbench.config.model import ModelArgs, parse_adapter_specs
from workbench.data.templates import resolve_template
from workbench.infer.engine import ChatEngine
from workbench.infer.scheduler import close_scheduler, paused
from workbench.infer.vllm_backend import VllmBackend, select_engine_problem
from workbench.models.adapters import check_adapter_finite, check_adapter_fits
from workbench.models.identity import adapter_trained_on, other_base
from workbench.models.loader import (
    LoadedModel, attach_adapters, load_model, load_tokenizer, pick_device, resolve_model_path,
)


def check_adapters_base(model: str, adapters: dict[str, str]) -> None:
    """Before loading ``model``: every adapter must have been trained on it (what evaluation checks)."""
    for name, path in adapters.items():
        base = other_base(path, model)
        if base is not None:
            raise WorkbenchError(
                f"adapter {name} ({path}) was trained on {base}, but the model to evaluate is {model}; "
                f"evaluate it with the model {base}"
            )


def check_adapter_base(loaded: LoadedModel, name: str, path: str | Path) -> None:
    """Raise a clear error when adapter ``path`` was trained for another base than the loaded one."""
    base = other_base(path, loaded.label, loaded.model_path)
    if base is not None:
        raise WorkbenchError(
            f"adapter {name} ({path}) was trained on {base}, but the loaded model is {loaded.label}; "
            f"load {base} to use it"
        )
    model = loaded.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_adapter_fits(base, path, loaded.label)
    check_adapter_finite(path, name)  # NaN/inf weights (a diverged run) are refused before anything changes


def attach_adapter(loaded: LoadedModel, name: str, path: str | Path) -> None:
    """Attach one named adapter, unmerged, after the base check; the base stays usable as "base"."""
    (name, path), = parse_adapter_specs([f"{name}={path}"]).items()
    model = loaded.model
    if name in loaded.adapters or name in (getattr(model, "peft_config", None) or {}):
        raise WorkbenchError(f"an adapter named {name!r} is already attached; detach it or choose another name")
    check_adapter_base(loaded, name, path)
    if hasattr(model, "peft_config") and hasattr(model, "load_adapter"):
        try:
            model.load_adapter(str(Path(path).expanduser()), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise WorkbenchError(f"cannot attach adapter {name} from {path}: {exc}") from None
        model.eval()
    else:
        model = attach_adapters(model, {name: str(Path(path).expanduser())}, base_label=loaded.label)
    loaded.model = model
    loaded.adapters[name] = str(path)


def detach_adapter(loaded: LoadedModel, name: str) -> None:
    model = loaded.model
    if name not in loaded.adapters:
        attached = ", ".join(loaded.adapters) or "none"
        raise WorkbenchError(f"adapter {name!r} is not attached (attached: {attached})")
    if len(model.peft_config) <= 1:
        loaded.model = model.unload()  # back to the plain base model (LoRA layers removed, nothing merged)
    else:
        model.delete_adapter(name)
    del loaded.adapters[name]


def load_for_chat(args: ModelArgs, adapters: dict[str, str] | None = None) -> LoadedModel:
    """The base model, then each adapter attached after its base check (CLI and API use this); with
    ``args.engine == "vllm"`` a vLLM server serving both instead (:func:`load_for_vllm`)."""
    adapters = dict(adapters if adapters is not None else args.adapter_map())
    for name, path in adapters.items():
        adapter_trained_on(path)  # a missing or broken adapter fails before the model loads
        check_adapter_finite(path, name)
    if args.engine == "vllm":
        return load_for_vllm(args, adapters)
    loaded = load_model(args, adapters={}, generation=True)
    for name, path in adapters.items():
        attach_adapter(loaded, name, path)
    return loaded


def load_for_vllm(args: ModelArgs, adapters: dict[str, str], *, stop_token_ids=None) -> LoadedModel:
    """The tokenizer here and vLLM's server (its own environment) serving the base and ``adapters``: a LoadedModel
    whose ``backend`` generates (``model`` is None). Refused with the exact reason where vLLM cannot run."""
    problem = select_engine_problem(args.engine, args.device, quantization_bit=args.quantization_bit)
    if problem:
        raise WorkbenchError(problem)
    started = time.perf_counter()
    model_path = resolve_model_path(args.model_name_or_path)
    for name, path in adapters.items():
        base = other_base(path, args.model_name_or_path, model_path)
        if base is not None:
            raise WorkbenchError(f"adapter {name} ({path}) was trained on {base}, but the model is "
                                 f"{args.model_name_or_path}; load {base} to use it")
    tokenizer = load_tokenizer(model_path, padding_side="left", trust_remote_code=args.trust_remote_code)
    if stop_token_ids is None:
        stop_token_ids = resolve_template("auto", args.model_name_or_path).stop_token_ids(tokenizer)
    backend = VllmBackend.start(model_path, adapters, dtype=args.infer_dtype, tokenizer=tokenizer,
                                stop_token_ids=stop_token_ids, device=args.device,
                                trust_remote_code=args.trust_remote_code)
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
        backend.context_length = config.get("max_position_embeddings")
    except (OSError, ValueError):
        backend.context_length = None
    return LoadedModel(model=None, tokenizer=tokenizer, model_path=model_path, label=args.model_name_or_path,
                       device=pick_device(args.device), dtype=args.infer_dtype, quantization_bit=None,
                       adapters=dict(adapters), load_seconds=time.perf_counter() - started, backend=backend)


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def refuse_adapter_change(loaded: LoadedModel) -> None:
    if loaded.backend is not None:
        raise WorkbenchError("the vllm engine serves the adapters it was started with; choose the adapters, then "
                             "load the model again")


class ModelManager:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.loaded: LoadedModel | None = None
        self.args: ModelArgs | None = None

    @property
    def lock(self) -> threading.RLock:
        """Held while loading, unloading or changing adapters (generation runs in the model's scheduler, which
        these pause or close first)."""
        return self._lock

    def load(self, args: ModelArgs, adapters: dict[str, str] | None = None) -> LoadedModel:
        problem = select_engine_problem(args.engine, args.device, quantization_bit=args.quantization_bit)
        if problem:  # refused before the loaded model is let go
            raise WorkbenchError(problem)
        with self._lock:
            self.unload(f"another model is being loaded ({args.model_name_or_path})")
            self.loaded = load_for_chat(args, adapters)
            self.args = args
            return self.loaded

    def unload(self, reason: str = "the model was unloaded") -> None:
        """Answers still waiting or running end with ``reason`` (after the current decode step)."""
        with self._lock:
            if self.loaded is None:
                return
            close_scheduler(self.loaded, reason)
            self.loaded = None
            self.args = None
            free_memory()

    def current(self) -> LoadedModel | None:
        return self.loaded

    def require(self) -> LoadedModel:
        if self.loaded is None:
            raise WorkbenchError("no model is loaded; choose a model in the top bar and press Load model")
        return self.loaded

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, str]:
        return dict(self.loaded.adapters) if self.loaded else {}

    def attach(self, name: str, path: str | Path) -> None:
        with self._lock:
            loaded = self.require()
            refuse_adapter_change(loaded)
            with paused(loaded):
                attach_adapter(loaded, name, path)

    def detach(self, name: str) -> None:
        with self._lock:
            loaded = self.require()
            refuse_adapter_change(loaded)
            with paused(loaded):
                detach_adapter(loaded, name)
            free_memory()

    def set_adapters(self, wanted: dict[str, str]) -> tuple[list[str], list[str]]:
        """Make the attached adapters exactly ``wanted`` ({name: dir}); returns (attached, detached).

        Everything is checked before anything changes, so a bad entry leaves the model as it was.
        """
        with self._lock:
            loaded = self.require()
            current = dict(loaded.adapters)
            to_detach = [n for n, p in current.items() if n not in wanted or os.path.realpath(
                os.path.expanduser(wanted[n])) != os.path.realpath(os.path.expanduser(p))]
            to_attach = {n: p for n, p in wanted.items() if n not in current or n in to_detach}
            if to_attach or to_detach:
                refuse_adapter_change(loaded)
            for name, path in to_attach.items():
                parse_adapter_specs([f"{name}={path}"])
                check_adapter_base(loaded, name, path)
            with paused(loaded):
                for name in to_detach:
                    detach_adapter(loaded, name)
                for name, path in to_attach.items():
                    attach_adapter(loaded, name, path)
            if to_detach:
                free_memory()
            return list(to_attach), to_detach

    def engine(self, template: str | None = "auto"):
        """A chat engine over the loaded model (every engine shares the model's scheduler)."""
        return ChatEngine(self.require(), template)

    def status(self) -> str:
        loaded = self.loaded
        if loaded is None:
            return "No model loaded."
        return f"Loaded {loaded.describe()} in {loaded.load_seconds:.1f}s."
