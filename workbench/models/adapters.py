"""PEFT adapters: check a directory before loading it, and check that it fits the loaded base model (module
names and shapes) so a mismatch is one clear sentence."""

from __future__ import annotations

import json
import re
from pathlib import Path

from workbench.config.base import WorkbenchError

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise WorkbenchError(f"adapter directory {path} does not exist")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise WorkbenchError(f"{path} is not a PEFT adapter: adapter_config.json is missing")
    if not any((path / w).is_file() for w in ADAPTER_WEIGHTS):
        raise WorkbenchError(f"{path}: adapter weights are missing (expected {ADAPTER_WEIGHTS[0]})")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WorkbenchError(f"{config_file}: not valid JSON ({exc})") from None


def adapter_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the adapter's safetensors header, without loading the weights."""
    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WorkbenchError(f"{weights}: corrupt safetensors file ({exc})") from None


def check_adapter_fits(model, path: str | Path, base_label: str) -> None:
    """Raise a clear error when the adapter was trained for a model of another shape."""
    config = read_adapter_config(path)
    trained_on = config.get("base_model_name_or_path") or "an unknown model"
    modules = dict(model.named_modules())
    for key, shape in adapter_shapes(path).items():
        match = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.weight)?$", key)
        if not match:
            continue
        module_name, which = match.groups()
        module = modules.get(module_name) or modules.get(f"model.{module_name}")
        if module is None:
            raise WorkbenchError(
                f"adapter {path} does not fit base model {base_label}: it has no module {module_name} "
                f"(the adapter was trained on {trained_on})"
            )
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        expected = shape[1] if which == "A" else shape[0]
        actual = in_features if which == "A" else out_features
        if actual is not None and expected != actual:
            raise WorkbenchError(
                f"adapter {path} does not fit base model {base_label}: {module_name} has "
                f"{'input' if which == 'A' else 'output'} size {actual} but the adapter expects {expected} "
                f"(the adapter was trained on {trained_on})"
            )


# (resolved path, mtime, size) → the first NaN/inf tensor found, or None: a file is read once however often it is
# attached (the chat tab checks before it detaches anything, then again while attaching).
_FINITE_CHECKED: dict[tuple[str, int, int], tuple[str, int, int, int] | None] = {}


def _adapter_tensors(weights: Path):
    """(name, tensor) pairs of an adapter weights file, one tensor in memory at a time for safetensors."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    else:
        import torch

        yield from torch.load(str(weights), map_location="cpu", weights_only=True).items()


def nonfinite_adapter_tensor(path: str | Path) -> tuple[str, str, int, int, int] | None:
    """The first tensor of adapter ``path`` that holds NaN or inf, as (file, tensor name, bad values, values,
    how many tensors are affected); None when every weight is finite (or there is no weights file)."""
    import torch

    path = Path(path).expanduser()
    weights = next((path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        return None
    st = weights.stat()
    key = (str(weights.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _FINITE_CHECKED:
        first, affected = None, 0
        try:
            for name, tensor in _adapter_tensors(weights):
                if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                    continue
                bad = int((~torch.isfinite(tensor)).sum())
                if bad:
                    affected += 1
                    first = first or (name, bad, tensor.numel())
        except Exception as exc:  # safetensors / torch raise their own types for a corrupt file
            raise WorkbenchError(f"{weights}: cannot read the adapter weights ({exc})") from None
        if len(_FINITE_CHECKED) > 64:
            _FINITE_CHECKED.clear()
        _FINITE_CHECKED[key] = (*first, affected) if first else None
    found = _FINITE_CHECKED[key]
    return (str(weights), *found) if found else None


def check_adapter_finite(path: str | Path, name: str | None = None) -> None:
    """Refuse an adapter whose weights hold NaN or inf (a diverged training run): it would only produce garbage."""
    found = nonfinite_adapter_tensor(path)
    if found is None:
        return
    weights, tensor, bad, total, affected = found
    label = f"adapter {name} ({path})" if name else f"adapter {path}"
    others = f"; {affected - 1} more tensor(s) too" if affected > 1 else ""
    raise WorkbenchError(
        f"{label} has non-finite weights and cannot be used: tensor {tensor} in {weights} holds {bad} NaN/inf "
        f"value(s) of {total}{others}. The training run that made it diverged; train it again, e.g. with a lower "
        "learning_rate."
    )
