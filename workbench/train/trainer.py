"""HF Trainer for pt/sft with a loss that skips the output layer where nothing is trained.

The vocabulary projection is the largest single matmul of a small model (49k × 576 for SmolLM2)
and its float32 cross-entropy the largest activation; prompt tokens (sft) and the first token of
each example have no label, so their logits are never computed: the model is asked only for the
positions that predict a label (``logits_to_keep`` with a tensor of positions, a standard argument of
transformers' causal LMs). The loss is the same token-weighted mean HF computes, normalised by the
label count of the whole accumulated (and, with several processes, global) batch. Where the architecture allows,
the output layer and the loss run together in chunks (:mod:`workbench.train.loss`): the logits are never whole.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from workbench.data.templates import IGNORE_INDEX
from workbench.train.collator import predicting_positions
from workbench.train.loss import fused_output_layer, hidden_states_as_logits, linear_cross_entropy


class CausalLMTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Our compute_loss normalises by num_items_in_batch itself (see below), whatever the wrapped model reports.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        # Sharded weights (DeepSpeed, FSDP) are gathered by the output layer's own forward: keep the plain loss there.
        sharded = bool(self.args.deepspeed or self.args.fsdp)
        self.chunked_loss = not sharded and fused_output_layer(self.model) is not None

    def _track_num_input_tokens(self, inputs):
        real = inputs.get("_real_tokens")
        if real is None:
            return super()._track_num_input_tokens(inputs)
        count = torch.as_tensor(int(real), device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(count).sum().item()

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        labels = inputs["labels"]
        # use_cache is always passed as False below; packed batches (collate_packed) carry it too.
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "_real_tokens", "_keep", "use_cache")}
        keep = inputs.get("_keep")
        if keep is None:  # a batch from another collator: worked out here (a device sync on a GPU)
            keep = predicting_positions(labels)
        targets = labels[:, 1:][:, keep]
        if self.chunked_loss:
            with hidden_states_as_logits(self.accelerator.unwrap_model(model)) as head:
                outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
            loss = linear_cross_entropy(outputs.logits, head.weight, targets, ignore_index=IGNORE_INDEX)
            outputs.logits = None  # hidden states, not logits: nobody downstream should read them as logits
        else:
            outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        if num_items_in_batch is None:
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
            if model.training:
                loss = loss / self.current_gradient_accumulation_steps
        else:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # num_items_in_batch counts every process's labels while DDP averages gradients.
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
