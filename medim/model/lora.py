"""LoRA on the backbone (PEFT) and the trainable state: exactly what a site trains and sends.

After :func:`apply_lora` the trainable set is what ``model.site_trains`` names: the LoRA A/B matrices on the
configured projections (always), the time embedding (``time``), the AdaLN modulation (``adaln``) or only its
per-layer offsets (``adaln_offsets``), and (``new_token_rows``, when ``model.train_new_token_rows``) the rows
MeDiM added to the vocabulary (``new_embed``, ``new_head``). Everything else is frozen. The default is
``[lora, time, adaln, new_token_rows]``.
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
    for tensor in site_trainable_parameters(model):
        tensor.requires_grad_(True)
    return model


def site_trainable_parameters(model: MeDiM) -> list[torch.Tensor]:
    """The non-LoRA parameters ``model.cfg.site_trains`` makes trainable (see the module docstring)."""
    trains = set(model.cfg.site_trains)
    modules: list[torch.nn.Module | None] = []
    if "time" in trains:
        modules.append(model.time)
    if "adaln" in trains:
        modules.append(model.adaln)
    if "new_token_rows" in trains and model.cfg.train_new_token_rows:
        modules += [model.new_embed, model.new_head]
    params: list[torch.Tensor] = [p for module in modules if module is not None for p in module.parameters()]
    if "adaln_offsets" in trains and model.adaln is not None:
        offsets = getattr(model.adaln, "offset", None)
        if isinstance(offsets, torch.nn.Embedding):  # adaLN-single: the per-layer offset table
            params.append(offsets.weight)
        else:  # per-layer: the bias of each layer's Linear(H, 6H)
            params += [lin.bias for lin in model.adaln.modules() if isinstance(lin, torch.nn.Linear)]
    return params


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
