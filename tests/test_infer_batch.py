"""Batched generation: left padding, and base + several adapters in ONE generate call give exactly what each
variant gives on its own (fp32, greedy), on the tiny model with two random LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs

PROMPTS = [
    "Translate to English: 今天天气很好。",
    "Summarize: the quick brown fox jumps over the lazy dog, again and again, all day long.",
    "What is the capital of France?",
    "Hi",
]


def make_random_lora(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A LoRA adapter with random A *and* B (PEFT initialises B to zero, which would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def two_adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"alpha": make_random_lora(tiny_model_dir, root / "alpha", 1),
            "beta": make_random_lora(tiny_model_dir, root / "beta", 2)}


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, two_adapters):
    from workbench.models.loader import load_model

    return load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu"),
                      adapters=two_adapters)


def _prompt_ids(loaded):
    from workbench.data.templates import get_template

    template = get_template("chatml")
    return template, [template.encode_prompt(loaded.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]


GEN = GenerationArgs(max_new_tokens=12)


def test_mixed_batch_equals_each_variant_alone(loaded):
    from workbench.infer.batch import generate_batch_output

    template, prompts = _prompt_ids(loaded)
    stops = template.stop_token_ids(loaded.tokenizer)
    variants = [None, "alpha", "beta"]
    # One call: every prompt under every variant, variants interleaved within the batch.
    rows = [(p, v) for p in prompts for v in variants]
    mixed = generate_batch_output(loaded, [p for p, _ in rows], [v for _, v in rows], GEN, stops)
    for v in variants:
        alone = generate_batch_output(loaded, prompts, [v] * len(prompts), GEN, stops)
        mixed_rows = [ids for ids, (_, rv) in zip(mixed.token_ids, rows) if rv == v]
        assert mixed_rows == alone.token_ids, f"variant {v or 'base'} differs between mixed and separate batches"
    # The adapters really change the answers, so the equality above is not trivially true.
    by_variant = {v: [ids for ids, (_, rv) in zip(mixed.token_ids, rows) if rv == v] for v in variants}
    assert by_variant[None] != by_variant["alpha"] and by_variant["alpha"] != by_variant["beta"]
    assert all(len(ids) > 0 for ids in mixed.token_ids)


def test_batched_left_padding_equals_one_at_a_time(loaded):
    """Left padding does not change greedy answers: batched rows equal unpadded single-prompt generation."""
    import torch

    from workbench.infer.batch import generate_batch_output

    template, prompts = _prompt_ids(loaded)
    stops = template.stop_token_ids(loaded.tokenizer)
    batched = generate_batch_output(loaded, prompts, ["alpha"] * len(prompts), GEN, stops)
    model = loaded.model
    model.set_adapter("alpha")
    for ids, expected in zip(prompts, batched.token_ids):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=GEN.max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=loaded.tokenizer.pad_token_id)
        single = out[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(single) if t in stops), len(single))
        assert single[:cut] == expected
    # The base in a mixed batch equals the model with adapters switched off.
    base = generate_batch_output(loaded, prompts[:1], [None], GEN, stops)
    with model.disable_adapter(), torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=GEN.max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=loaded.tokenizer.pad_token_id)
    single = out[0, len(prompts[0]):].tolist()
    cut = next((i for i, t in enumerate(single) if t in stops), len(single))
    assert single[:cut] == base.token_ids[0]


def test_contract_function_and_bad_inputs(loaded, tiny_model_dir):
    from workbench.infer.batch import generate_batch
    from workbench.models.loader import load_model

    template, prompts = _prompt_ids(loaded)
    stops = template.stop_token_ids(loaded.tokenizer)
    texts = generate_batch(loaded, prompts[:2], ["base", "beta"], GEN, stops)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(WorkbenchError, match=r"adapter 'gamma' is not attached .*attached: alpha, beta"):
        generate_batch(loaded, prompts[:1], ["gamma"], GEN, stops)
    with pytest.raises(WorkbenchError, match="2 prompts but 1 adapter names"):
        generate_batch(loaded, prompts[:2], ["alpha"], GEN, stops)
    with pytest.raises(WorkbenchError, match="empty prompt"):
        generate_batch(loaded, [[]], [None], GEN, stops)
    assert generate_batch(loaded, [], [], GEN, stops) == []
    # A plain model (no adapters attached) answers base rows and names the missing adapter otherwise.
    plain = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu"))
    assert len(generate_batch(plain, prompts[:2], None, GEN, stops)) == 2
    with pytest.raises(WorkbenchError, match="adapter 'alpha' is not attached .*attached: none"):
        generate_batch(plain, prompts[:1], ["alpha"], GEN, stops)
