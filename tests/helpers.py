"""Helpers shared by tests: the tiny random model and paths to the shared public data."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def make_tiny_model(bundled_dir: Path, out_dir: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama with the bundled model's tokenizer and chat template: real shapes, tiny sizes.

    Module names match the real model (q_proj, v_proj, ...), so LoRA targets, templates and
    adapters behave the same; only the numbers are random.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    base = AutoConfig.from_pretrained(bundled_dir)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=base.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id,
        pad_token_id=base.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = base.eos_token_id
    model.generation_config.pad_token_id = base.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (bundled_dir / name).is_file():
            shutil.copy(bundled_dir / name, out_dir / name)
    return out_dir


def tiny_values(model_dir: Path, out: Path, **overrides) -> dict:
    """A short LoRA SFT run of the tiny model on the identity set, as training options."""
    values = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora",
        "lora_target": "q_proj,v_proj", "dataset": "identity", "cutoff_len": 96, "max_steps": 3,
        "per_device_train_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 100,
        "output_dir": str(out), "seed": 7,
    }
    values.update(overrides)
    return values


def write_tiny_preset(home: Path, model_dir: Path, name: str, **overrides) -> str:
    """A user preset like cpu_quickstart, on the tiny random model with a few steps (fast on CPU); its name."""
    import yaml

    folder = home / "presets"
    folder.mkdir(parents=True, exist_ok=True)
    values = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "dataset": "identity",
        "cutoff_len": 64, "per_device_train_batch_size": 2, "max_steps": 8, "logging_steps": 1,
        "learning_rate": 1e-3, "save_steps": 4, "bf16": False, **overrides,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(values))
    return name


def abort_leftover_jobs(runs: Path) -> None:
    """Jobs run in sessions of their own and would outlive the app under test: stop whatever a failed test left."""
    from workbench.jobs import store as jobs

    for job in jobs.list_jobs(runs):
        if job.is_active():
            job.abort(grace=2)
