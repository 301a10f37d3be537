"""FedProx's proximal term for local training: ``(mu / 2) * ||w - w_anchor||^2`` over the trainable tensors.

The anchor is the trainable state the site received for this round. The term does not depend on any record,
so under DP-SGD it is added *after* per-sample clipping and noise (it needs no privacy): both the private and
the non-private loop add its gradient ``mu * (w - w_anchor)`` to the (clipped, and under DP noised) data
gradient just before the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ProximalTerm:
    """Proximal pull of the named trainable parameters toward ``anchor`` (same keys, same shapes)."""

    mu: float
    params: dict[str, nn.Parameter]
    anchor: dict[str, torch.Tensor]

    @classmethod
    def for_model(
        cls, model: nn.Module, *, mu: float, anchor: dict[str, torch.Tensor] | None
    ) -> ProximalTerm | None:
        """The term for ``model``'s trainable tensors, or None when ``mu == 0``.

        ``anchor`` defaults to the current trainable state (what the site received, when called before training).
        """
        if mu < 0:
            raise ValueError(f"proximal_mu={mu!r} is invalid: allowed >= 0")
        if mu == 0:
            return None
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if anchor is None:
            anchor = {name: p.detach().clone() for name, p in params.items()}
        missing, extra = sorted(set(params) - set(anchor)), sorted(set(anchor) - set(params))
        if missing or extra:
            raise KeyError(f"proximal anchor mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
        fixed: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            if anchor[name].shape != p.shape:
                raise ValueError(
                    f"proximal anchor {name}: shape {tuple(anchor[name].shape)} != {tuple(p.shape)}"
                )
            fixed[name] = anchor[name].detach().to(device=p.device, dtype=p.dtype).clone()
        return cls(mu=mu, params=params, anchor=fixed)

    def add_grad(self) -> None:
        """``p.grad += mu * (p - anchor)`` for every parameter (creates ``p.grad`` when absent)."""
        with torch.no_grad():
            for name, p in self.params.items():
                pull = self.mu * (p - self.anchor[name])
                if p.grad is None:
                    p.grad = pull
                else:
                    p.grad.add_(pull)
