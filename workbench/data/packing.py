"""Pack several tokenised examples into fixed-length rows without attention between them.

Each packed row holds whole examples back to back with ``position_ids`` restarting at 0 for each one.
transformers (``masking_utils.find_packed_sequence_indices``) turns restarting position ids into a
block-diagonal causal mask when no ``attention_mask`` and no KV cache are passed (``use_cache=False``),
so a token never attends to another example (sdpa, eager and flash-attention alike). The first label of every example is -100 so no loss
is computed for "predicting" an example from the end of the previous one.
"""

from __future__ import annotations

from typing import Any, Iterable

from workbench.data.templates import IGNORE_INDEX


def pack_examples(examples: Iterable[tuple[list[int], list[int]]], cutoff_len: int) -> list[dict[str, list[int]]]:
    """First-fit-decreasing bin packing of (input_ids, labels) pairs into rows of at most ``cutoff_len``.

    Examples longer than ``cutoff_len`` are truncated to it. Returns rows with input_ids, labels and
    position_ids (no attention_mask: see the module docstring).
    """
    items = [(list(ids[:cutoff_len]), list(labels[:cutoff_len])) for ids, labels in examples if len(ids)]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]), reverse=True)
    bins: list[list[int]] = []  # example indices per row
    space: list[int] = []
    for i in order:
        n = len(items[i][0])
        for b, free in enumerate(space):
            if free >= n:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(cutoff_len - n)
    rows = []
    for members in bins:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in sorted(members):  # keep the original order inside a row
            ids, labels = items[i]
            row["input_ids"] += ids
            row["labels"] += [IGNORE_INDEX] + labels[1:]
            row["position_ids"] += list(range(len(ids)))
        rows.append(row)
    return rows


def pack_dataset(ds, cutoff_len: int):
    """A tokenised ``datasets.Dataset`` (input_ids, labels) → packed rows."""
    import datasets

    rows = pack_examples(zip(ds["input_ids"], ds["labels"]), cutoff_len)
    return datasets.Dataset.from_list(rows)


def collate_packed(features: list[dict[str, Any]], pad_token_id: int):
    """Batch packed rows: pad to the longest row, without an attention mask (so packing is detected).

    Padding is one more "example" with its own position ids, labelled -100, so it attends only to itself.
    ``use_cache=False`` is part of the batch: with a KV cache transformers skips the packed-sequence mask.
    """
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids, labels, positions = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append(list(f["input_ids"]) + [pad_token_id] * pad)
        labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        positions.append(list(f["position_ids"]) + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions),
            "use_cache": False}
