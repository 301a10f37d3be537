"""AdamW's per-parameter state carried from one local training run to the next (a site's rounds).

A site that starts every round with a fresh AdamW takes, in its first steps, a normalised step of about the
learning rate on every trainable coordinate (``m_hat / sqrt(v_hat)`` is +-1 after one gradient), whatever that
coordinate's gradient scale; averaged over sites these kicks mostly cancel, so the federation's progress stalls
after a round or two. Keeping the moments between rounds gives each site the running gradient scale it would have
in one long run. The moments are the site's own (under DP they are post-processing of noised gradients) and never
leave it; only the trainable tensors do.

:class:`Moments` is the state by trainable-parameter name: ``<name>:exp_avg`` and ``<name>:exp_avg_sq`` (the
parameter's shape, fp32) and ``<name>:step`` (a scalar), the keys of ``torch.optim.AdamW``'s state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medim.model.medim import MeDiM

KINDS = ("exp_avg", "exp_avg_sq", "step")


@dataclass
class Moments:
    """AdamW state by trainable-parameter name ({"<name>:<kind>": tensor}); empty = a fresh optimizer."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def check(self, model: MeDiM) -> None:
        """Raise ValueError unless every moment belongs to a trainable parameter of ``model`` (name, all three
        kinds, shape)."""
        named = trainable_parameters(model)
        for name in sorted({key.rsplit(":", 1)[0] for key in self.tensors}):
            if name not in named:
                raise ValueError(f"optimizer moments for {name}, which is not in the trainable set")
            if any(f"{name}:{kind}" not in self.tensors for kind in KINDS):
                raise ValueError(f"optimizer moments for {name}: expected {', '.join(KINDS)}")
            for kind in ("exp_avg", "exp_avg_sq"):
                shape = tuple(self.tensors[f"{name}:{kind}"].shape)
                if shape != tuple(named[name].shape):
                    raise ValueError(
                        f"optimizer moments {name}:{kind}: shape {shape} != {tuple(named[name].shape)}"
                    )

    def load_into(self, optimizer: torch.optim.Optimizer, model: MeDiM) -> None:
        """Set ``optimizer``'s state for ``model``'s trainable parameters from these moments (parameters without
        moments start fresh; no-op if empty). Raises ValueError as :meth:`check`."""
        self.check(model)
        for name, param in trainable_parameters(model).items():
            if f"{name}:step" in self.tensors:
                optimizer.state[param] = {kind: self.tensors[f"{name}:{kind}"].clone() for kind in KINDS}

    @classmethod
    def read_from(cls, optimizer: torch.optim.Optimizer, model: MeDiM) -> Moments:
        """The optimizer's current state for ``model``'s trainable parameters (those it has stepped)."""
        tensors = {}
        for name, param in trainable_parameters(model).items():
            state = optimizer.state.get(param, {})
            if all(kind in state for kind in KINDS):
                tensors.update({f"{name}:{kind}": state[kind].detach().clone() for kind in KINDS})
        return cls(tensors)


def trainable_parameters(model: MeDiM) -> dict[str, torch.nn.Parameter]:
    """``model``'s parameters that require grad, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
