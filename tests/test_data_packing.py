"""Packing: examples share a row but never attend to each other (checked on a real forward pass)."""

from __future__ import annotations

import pytest

from workbench.data.packing import collate_packed, pack_examples
from workbench.data.templates import IGNORE_INDEX


def test_pack_examples_layout():
    examples = [([1, 2, 3], [-100, 2, 3]), ([4, 5, 6, 7, 8], [-100, -100, 6, 7, 8]), ([9, 10], [9, 10])]
    rows = pack_examples(examples, cutoff_len=6)
    assert sorted(len(r["input_ids"]) for r in rows) == [5, 5]
    by_first = {r["input_ids"][0]: r for r in rows}
    assert by_first[1] == {"input_ids": [1, 2, 3, 9, 10], "labels": [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 10],
                           "position_ids": [0, 1, 2, 0, 1]}
    assert by_first[4]["position_ids"] == [0, 1, 2, 3, 4]
    # Longer than a row: truncated to it.
    (row,) = pack_examples([(list(range(10)), list(range(10)))], cutoff_len=4)
    assert row["input_ids"] == [0, 1, 2, 3] and row["labels"][0] == IGNORE_INDEX


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_separate_logits(tiny_model_dir, attn):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    texts = ["The cat sat on the mat.", "Packing keeps examples apart", "Short"]
    examples = [(ids, list(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rows = pack_examples(examples, cutoff_len=64)
    assert len(rows) == 1
    batch = collate_packed(rows + [{"input_ids": [5, 6], "labels": [5, 6], "position_ids": [0, 1]}],
                           tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for ids, _ in examples:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(packed[start:start + len(ids)], alone, rtol=1e-4, atol=1e-4)
            start += len(ids)
