"""Replaying the seeds' workflows: the last differences they showed (parameter counts of quantized models,
threads per training process)."""

from __future__ import annotations

import pytest

from workbench.config.model import ModelArgs


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_models_report_their_real_number_of_weights(tiny_model_dir, bits):
    """The 4-bit log said "of 59,773,248" for a 135M model: packed weights were counted as storage elements."""
    pytest.importorskip("bitsandbytes")
    from workbench.models.loader import load_model
    from workbench.train.methods import count_parameters

    plain = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), for_training=True).model
    quantized = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=bits),
                           for_training=True).model
    assert any(p.__class__.__name__ in ("Params4bit", "Int8Params") for p in quantized.parameters())
    assert count_parameters(quantized)[1] == count_parameters(plain)[1] == sum(p.numel() for p in plain.parameters())
