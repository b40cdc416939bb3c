"""Batches for pt/sft without wasted compute.

* padding-free (default): the batch's examples are laid end to end in one row with ``position_ids``
  restarting at 0 for each, and no ``attention_mask``; transformers then builds a block-diagonal
  causal mask (``masking_utils.find_packed_sequence_indices``), so no token attends across examples
  and no token is padding. The first label of every example is -100 so nothing is "predicted" from
  the previous example.
* padded: right padding to the longest example (used when a flattened row would be too long for a
  dense attention mask, or with ``padding_free: false``).
* rows already packed by the data pipeline (``packing: true``) carry their own ``position_ids``.

Each batch also carries ``_real_tokens`` (the non-padding token count) for tokens/s and ``_keep`` (the positions
whose next token has a label: the only logits the loss needs), both worked out here on the host so the training
step itself waits for no device-to-host copy; the trainer removes them before the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.data.templates import IGNORE_INDEX


@dataclass
class CausalLMCollator:
    pad_token_id: int
    padding_free: bool = True
    # Above this many tokens a flattened row's dense L×L mask costs more than padding saves (sdpa/eager);
    # flash-attention reads position_ids directly and has no such limit.
    max_flat_tokens: int = 8192

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._collate(features)
        batch["_keep"] = predicting_positions(batch["labels"])
        return batch

    def _collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(f["input_ids"]) for f in features]
        packed = "position_ids" in features[0]
        if self.padding_free and sum(lengths) <= self.max_flat_tokens:
            ids, labels, positions = [], [], []
            for f in features:
                n = len(f["input_ids"])
                ids += list(f["input_ids"])
                lab = list(f["labels"])
                if not packed:
                    lab[0] = IGNORE_INDEX
                labels += lab
                positions += list(f["position_ids"]) if packed else list(range(n))
            return {
                "input_ids": torch.tensor([ids]),
                "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]),
                "_real_tokens": sum(lengths),
            }
        width = max(lengths)
        if packed:
            from workbench.data.packing import collate_packed

            batch = collate_packed(features, self.pad_token_id)
            batch["_real_tokens"] = sum(lengths)
            return batch
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = lengths[i]
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "_real_tokens": sum(lengths)}


def predicting_positions(labels):
    """Positions (columns) whose next token is labelled in some row; one position when none is, so the loss still
    has a graph to go through."""
    import torch

    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)
