"""The chunked output-layer cross-entropy (workbench/train/loss.py): the same loss and gradients as the plain
path, in float32 and under bf16 autocast, and used only where the architecture's logits are lm_head(hidden)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.train.loss import fused_output_layer, hidden_states_as_logits, linear_cross_entropy


def plain(hidden, weight, targets):
    logits = hidden @ weight.T
    return F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")


def case(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 16, generator=gen, dtype=dtype, requires_grad=True)
    weight = (torch.randn(50, 16, generator=gen) * 0.3).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (11,), generator=gen)
    targets[[0, 4, 5]] = -100  # unlabelled rows add nothing, to the loss or the gradients
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_rows", [3, 1024])  # several chunks (one of them partly unlabelled), and one
def test_loss_and_gradients_equal_the_plain_path_in_float32(chunk_rows):
    hidden, weight, targets = case()
    expected = plain(hidden, weight, targets)
    want_h, want_w = torch.autograd.grad(expected * 0.5, (hidden, weight))
    got = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    got_h, got_w = torch.autograd.grad(got * 0.5, (hidden, weight))  # the upstream gradient is applied
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got_h, want_h, atol=1e-6) and torch.allclose(got_w, want_w, atol=1e-6)
    assert got_h[[0, 4, 5]].abs().max() == 0


def test_under_bf16_autocast_the_matmuls_run_in_bf16_like_the_plain_path():
    hidden, weight, targets = case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(hidden, weight, targets)
        got = linear_cross_entropy(hidden, weight, targets, chunk_rows=4)
    want_h, want_w = torch.autograd.grad(expected, (hidden, weight))
    got_h, got_w = torch.autograd.grad(got, (hidden, weight))
    assert got_h.dtype == want_h.dtype == torch.float32 and got_w.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-3)  # the same bf16 logits, float32 log-sum-exp
    assert torch.allclose(got_h, want_h, atol=2e-2, rtol=2e-2) and torch.allclose(got_w, want_w, atol=2e-2, rtol=2e-2)
    full = plain(hidden.detach(), weight.detach(), targets)
    assert not torch.allclose(got.detach(), full, rtol=1e-6)  # it really computed in bf16 (differs from float32)


def test_a_frozen_weight_gets_no_gradient_and_no_grad_mode_keeps_nothing():
    hidden, weight, targets = case()
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, targets)
    (grad_h,) = torch.autograd.grad(loss, (hidden,))
    assert torch.allclose(grad_h, torch.autograd.grad(plain(hidden, weight, targets), (hidden,))[0], atol=1e-6)
    with torch.no_grad():
        assert not linear_cross_entropy(hidden, weight, targets).requires_grad


def test_which_models_take_the_chunked_loss(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fused_output_layer(model) is model.lm_head  # a Llama: logits = lm_head(hidden)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert fused_output_layer(lora) is lora.get_base_model().lm_head  # LoRA elsewhere: still plain
    on_head = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=2, target_modules=["lm_head"]))
    assert fused_output_layer(on_head) is None  # a trained LoRA on the output layer: the plain path
    config = AutoConfig.for_model("gemma2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    assert fused_output_layer(AutoModelForCausalLM.from_config(config)) is None  # soft-capped logits

    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), hidden_states_as_logits(model) as head:
        hidden = model(input_ids=ids, logits_to_keep=torch.tensor([1, 2])).logits
    assert model.lm_head is head and hidden.shape == (1, 2, model.config.hidden_size)  # put back afterwards
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=torch.tensor([1, 2])).logits
    assert torch.allclose(hidden @ head.weight.T, logits, atol=1e-5)


def test_the_trainer_uses_it_and_trains_the_same(tiny_model_dir, tmp_path):
    """One optimizer step with the chunked loss and one with the plain loss: the same loss, the same weights."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from workbench.train.collator import CausalLMCollator
    from workbench.train.trainer import CausalLMTrainer

    torch.manual_seed(0)
    features = [{"input_ids": (ids := torch.randint(5, 1000, (n,)).tolist()), "labels": [-100] * 3 + ids[3:]}
                for n in (12, 20)]
    batch = CausalLMCollator(pad_token_id=0)(features)
    results = []
    for chunked in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = CausalLMTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                      report_to="none"))
        assert trainer.chunked_loss
        trainer.chunked_loss = chunked
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and ({"lm_head.weight", "model.embed_tokens.weight"} & grads_a.keys())
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


def test_a_frozen_weight_is_cast_once_until_it_changes():
    from workbench.train import loss as loss_module

    hidden, weight, targets = case()
    weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = linear_cross_entropy(hidden, weight, targets)
        copy = loss_module._cast[2]
        assert linear_cross_entropy(hidden, weight, targets).item() == first.item() and loss_module._cast[2] is copy
        with torch.no_grad():
            weight.mul_(2)  # changed in place (an optimizer step, a load): cast again
        changed = linear_cross_entropy(hidden, weight, targets)
    assert loss_module._cast[2] is not copy and changed.item() != first.item()


def test_a_compiled_model_trains_the_same_loss_curve(tiny_model_dir, tmp_path):
    """torch_compile: true (the whole model through inductor, with the chunked loss swapping its output layer
    each step) gives the eager run's losses, same seed, within float noise."""
    from helpers import tiny_values
    from workbench.config.train import parse_train_config
    from workbench.train.callbacks import read_progress
    from workbench.train.run import run_training

    curves = []
    for compiled in (False, True):
        out = tmp_path / f"compiled-{compiled}"
        run_training(parse_train_config(tiny_values(tiny_model_dir, out, torch_compile=compiled, max_steps=3)),
                     log=lambda msg: None)
        curves.append([e["loss"] for e in read_progress(out / "progress.jsonl") if e["kind"] == "train"])
    eager, compiled = curves
    assert len(eager) == len(compiled) == 3
    assert all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(eager, compiled)), curves


def test_the_collator_says_which_logits_the_loss_needs():
    """Worked out on the host with the batch, so a GPU step waits for no device-to-host copy (nonzero)."""
    from workbench.train.collator import CausalLMCollator

    features = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
                {"input_ids": [9, 10, 11], "labels": [-100, 10, 11]}]
    flat = CausalLMCollator(pad_token_id=0)(features)
    # Row [5 6 7 8 | 9 10 11]: labels at 2, 3 (first example) and 5, 6 (the second's first label is dropped).
    assert flat["_keep"].tolist() == [1, 2, 4, 5]
    padded = CausalLMCollator(pad_token_id=0, padding_free=False)(features)
    assert padded["_keep"].tolist() == [0, 1, 2]  # columns labelled in some row
    unlabelled = CausalLMCollator(pad_token_id=0)([{"input_ids": [5, 6], "labels": [-100, -100]}])
    assert unlabelled["_keep"].tolist() == [0]  # one position keeps the graph connected
