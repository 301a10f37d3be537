"""Opacus attached to a built MeDiM for DP-SGD steps: per-sample gradients, per-sample clipping, Gaussian noise.

:func:`privatize` attaches Opacus' per-sample-gradient hooks to the model *in place* (``wrap_model=False``
semantics: no wrapper module, so ``state_dict`` / :func:`medim.model.lora.trainable_state` keys stay the same)
and wraps the optimizer in Opacus' ``DPOptimizer``. :meth:`DPSession.close` removes every hook and every
attribute Opacus put on the parameters, so the model samples, saves and trains normally afterwards.

Build and place the model (device, dtype, LoRA) completely *before* :func:`privatize`: parameters created or
moved afterwards are what the opacus#820 follow-up blames for silently corrupted LoRA updates.

Loss contract: the batch loss is the mean over samples of per-sample losses ``per_sample`` [B] where each sample
is normalised by its own token count (:func:`medim.diffusion.diffusion_loss`), never a token mean over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus.grad_sample.gsm_base import AbstractGradSampleHooks
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer, get_optimizer_class
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn

from medim.proximal import ProximalTerm

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
# attributes Opacus' optimizer leaves on parameters (the hooks' cleanup removes the grad-sample ones)
_OPTIMIZER_PARAM_ATTRS = ("summed_grad",)


@dataclass
class DPSession:
    """A model under Opacus: per-sample-gradient hooks + a DP optimizer over its trainable parameters."""

    model: nn.Module
    hooks: AbstractGradSampleHooks
    optimizer: DPOptimizer
    mode: str
    params: list[nn.Parameter]

    def backward(self, per_sample: torch.Tensor | None) -> None:
        """Per-sample gradients of ``mean(per_sample)``; per_sample FloatTensor [B], None for an empty batch.

        An empty Poisson batch still takes its step: zero gradients, to which the optimizer adds the noise
        (skipping it would reveal that the batch was empty).
        """
        self.optimizer.zero_grad(set_to_none=True)
        if per_sample is None:
            for p in self.params:
                p.grad = torch.zeros_like(p)
                if self.mode != "ghost":
                    p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]  # Opacus: empty batch
        elif self.mode == "ghost":
            DPTensorFastGradientClipping(self.hooks, self.optimizer, per_sample, "mean").backward()
        else:
            per_sample.mean().backward()
            for p in self.params:  # bf16 autocast: clip on fp32 norms so each clipped gradient is <= C
                grad_sample = getattr(p, "grad_sample", None)
                if isinstance(grad_sample, torch.Tensor) and grad_sample.dtype != p.dtype:
                    p.grad_sample = grad_sample.to(p.dtype)  # type: ignore[attr-defined]

    def accumulate(self, per_sample: torch.Tensor) -> None:
        """A chunk of a larger Poisson batch: per-sample gradients of ``per_sample`` [b], clipped and added to
        the batch's running sum; no noise, no step (the batch's last chunk goes through backward + step)."""
        self.backward(per_sample)
        self.optimizer.signal_skip_step(do_skip=True)
        if self.optimizer.pre_step():
            raise RuntimeError("Opacus took a step on a chunk it was told to accumulate")

    def step(self, prox: ProximalTerm | None = None) -> bool:
        """Clip per sample, sum, add noise, scale by the expected batch size, add ``prox``'s pull, step.

        Returns False when Opacus skipped the step.
        """
        if not self.optimizer.pre_step():
            return False
        if prox is not None:
            prox.add_grad()
        self.optimizer.original_optimizer.step()
        return True

    def close(self) -> None:
        """Remove Opacus' hooks and parameter attributes; gradients are cleared."""
        self.optimizer.zero_grad(set_to_none=True)
        self.hooks.cleanup()
        for p in self.model.parameters():
            for attr in _OPTIMIZER_PARAM_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)


def privatize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    grad_sample_mode: str,
    noise_generator: torch.Generator,
) -> DPSession:
    """Attach Opacus to ``model`` (in place) and wrap ``optimizer`` (over exactly the trainable parameters).

    Args:
        noise_multiplier: Gaussian noise std / ``max_grad_norm`` added to the clipped per-sample gradient sum.
        max_grad_norm: flat L2 bound of each sample's gradient over all trainable tensors.
        expected_batch_size: sample_rate * N; the noised sum is divided by it (Poisson batches vary in size).
        grad_sample_mode: "hooks" | "functorch" | "ghost" (ghost clipping: per-sample norms, no per-sample
            gradients materialised).
        noise_generator: randomness of the noise.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"privacy.grad_sample_mode={grad_sample_mode!r} is invalid: allowed {', '.join(GRAD_SAMPLE_MODES)}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if in_optimizer != {id(p) for p in params}:
        raise ValueError("the optimizer must hold exactly the model's trainable parameters")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise ValueError(f"place the whole model on one device before privatising it (found {devices})")
    ModuleValidator.validate(model, strict=True)
    extra = {"max_grad_norm": max_grad_norm} if grad_sample_mode == "ghost" else {}
    hooks = prepare_module(
        model,
        grad_sample_mode=grad_sample_mode,
        wrap_model=False,
        batch_first=True,
        loss_reduction="mean",
        **extra,
    )
    hooks.forbid_grad_accumulation()
    optimizer_class = get_optimizer_class(
        clipping="flat", distributed=False, grad_sample_mode=grad_sample_mode
    )
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=noise_generator,
    )
    return DPSession(model=model, hooks=hooks, optimizer=dp_optimizer, mode=grad_sample_mode, params=params)
