"""Held-out evaluation that needs only the model: the diffusion loss per modality, and sampled generations.

The loss is the joint-task NELBO estimate on a fixed grid of times with a fixed seed, so numbers are comparable
across checkpoints and rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medim.config import DiffusionConfig, SamplerConfig
from medim.diffusion import JOINT, add_noise, diffusion_loss
from medim.model.medim import MeDiM
from medim.sampling import image_to_text_prompt, sample, text_to_image_prompt

T_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class EvalLoss:
    """Mean joint-task loss over a time grid: ``loss = image + text`` (per-token NELBO parts), over ``n`` rows."""

    loss: float
    image: float
    text: float
    n: int


@torch.no_grad()
def heldout_loss(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    t_grid: tuple[float, ...] = T_GRID,
    seed: int = 0,
    batch_size: int = 32,
    autocast_bf16: bool = True,
) -> EvalLoss:
    """Joint-task loss of ``model`` on x0 [N, L], averaged over ``t_grid`` and rows (deterministic)."""
    if x0.shape[0] == 0:
        return EvalLoss(float("nan"), float("nan"), float("nan"), 0)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64)
    count = 0
    for t_value in t_grid:
        for start in range(0, x0.shape[0], batch_size):
            rows = x0[start : start + batch_size]
            n = rows.shape[0]
            batch = add_noise(
                rows,
                model.vocab,
                diffusion,
                t=torch.full((n,), t_value),
                task=torch.full((n,), JOINT),
                generator=generator,
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
                logits = model(batch.xt, batch.sigma)
            loss = diffusion_loss(logits, batch, model.vocab)
            sums += (
                torch.tensor([loss.total.item(), loss.image.item(), loss.text.item()], dtype=torch.float64)
                * n
            )
            count += n
    mean = (sums / count).tolist()
    return EvalLoss(mean[0], mean[1], mean[2], int(x0.shape[0]))


@dataclass
class Generations:
    """Sampled sequences [B, L] for report->image and image->report from the same clean x0 [B, L]."""

    x0: torch.Tensor
    images_from_reports: torch.Tensor
    reports_from_images: torch.Tensor


@torch.no_grad()
def generate_both_ways(
    model: MeDiM, x0: torch.Tensor, *, sampler: SamplerConfig, seed: int = 0
) -> Generations:
    """Report->image and image->report generations conditioned on the rows of x0 [B, L]."""
    model.eval()
    vocab = model.vocab
    images = sample(
        model, text_to_image_prompt(vocab, x0), sampler, generator=torch.Generator().manual_seed(seed)
    )
    reports = sample(
        model, image_to_text_prompt(vocab, x0), sampler, generator=torch.Generator().manual_seed(seed)
    )
    return Generations(x0=x0, images_from_reports=images, reports_from_images=reports)
