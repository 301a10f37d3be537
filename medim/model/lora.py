"""LoRA on the backbone (PEFT) and the trainable state: exactly what a site trains and sends.

After :func:`apply_lora` the trainable set is: the LoRA A/B matrices on the configured projections, the time
embedding, the AdaLN modulation, and (when ``model.train_new_token_rows``) the rows MeDiM added to the
vocabulary (``new_embed``, ``new_head``). Everything else is frozen.
"""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model

from medim.config import LoraConfig
from medim.model.medim import MeDiM


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    """The PEFT ``LoraConfig`` for our settings (saved as ``adapter_config.json``)."""
    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )


def apply_lora(model: MeDiM) -> MeDiM:
    """Inject LoRA adapters into ``model.backbone`` in place and set the trainable set. Returns ``model``."""
    if is_lora(model):
        raise ValueError("model already has LoRA adapters")
    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(model.cfg.lora), model.backbone)
    for name, param in model.backbone.named_parameters():
        param.requires_grad_("lora_" in name)
    trainable = [m for m in (model.time, model.adaln) if m is not None]
    if model.cfg.train_new_token_rows:
        trainable += [model.new_embed, model.new_head]
    for module in trainable:
        module.requires_grad_(True)
    return model


def is_lora(model: MeDiM) -> bool:
    return any("lora_" in name for name, _ in model.backbone.named_parameters())


def trainable_state(model: MeDiM) -> dict[str, torch.Tensor]:
    """Detached copies of exactly the trainable tensors, keyed by parameter name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def trainable_names(model: MeDiM) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def load_trainable_state(model: MeDiM, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable tensors. Keys must equal the trainable set; shapes must match."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        raise KeyError(f"trainable state mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            value = state[name]
            if value.shape != p.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != expected {tuple(p.shape)}")
            p.copy_(value.to(p.dtype))
