"""Known models and the chat template each uses: the model catalog (:mod:`workbench.models.catalog`) with the
template rules of :mod:`workbench.data.templates`, which need the catalog for ``auto`` and therefore live below
this module rather than in it."""

from __future__ import annotations

from workbench.data.templates import adapter_template, default_template, exported_template, variant_template
from workbench.models.catalog import MODELS, ModelInfo, lookup

__all__ = ["MODELS", "ModelInfo", "adapter_template", "default_template", "exported_template", "lookup",
           "variant_template"]
