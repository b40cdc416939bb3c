"""Random LoRA adapters for chat tests: real PEFT adapters on real (tiny or bundled) models, with
non-zero B matrices so every adapter changes the answers."""

from __future__ import annotations

import json
from pathlib import Path


def make_adapter(model_dir: Path, out: Path, *, seed: int, r: int = 4, targets=("q_proj", "v_proj"),
                 base_name: str | None = None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    if base_name is not None:  # what a workbench training run records
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out
