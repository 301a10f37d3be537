"""Fold LoRA adapters into the backbone's weights, so sampling runs on plain linear layers.

For every PEFT LoRA layer ``y = W x + (B A x) * alpha / r`` PEFT's own ``merge`` adds ``B A * alpha / r`` to
``W`` (with ``safe_merge``, which refuses non-finite results); the LoRA wrapper is then replaced by its base
layer. The merged model computes the same logits as the adapted one up to floating-point rounding, but has no
trainable LoRA tensors any more: merge a copy for sampling, not a model a site keeps training.
"""

from __future__ import annotations

from peft.tuners.lora.layer import LoraLayer
from torch import nn

from medim.model.medim import MeDiM


def merge_lora(model: MeDiM) -> int:
    """Merge every LoRA layer of ``model.backbone`` into its base layer, in place; returns how many were merged.

    Raises ValueError when the model has no LoRA layers.
    """
    names = [name for name, module in model.backbone.named_modules() if isinstance(module, LoraLayer)]
    if not names:
        raise ValueError("the model has no LoRA adapters to merge")
    for name in names:
        layer = model.backbone.get_submodule(name)
        assert isinstance(layer, LoraLayer)
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.backbone.get_submodule(parent_name)
        base = layer.get_base_layer()
        assert isinstance(base, nn.Module)
        setattr(parent, child, base)
    return len(names)
