"""Absorbing-state ([MASK]) discrete diffusion in continuous time with the log-linear schedule.

* Mask probability at time t in (0, 1]: ``(1 - eps) t``; total noise ``sigma(t) = -log(1 - (1 - eps) t)``.
* One t per sample, drawn low-discrepancy (stratified over the batch); every token masked independently.
* Loss (MDLM NELBO for this schedule): cross-entropy on masked tokens weighted by ``1/t``. Each sample is averaged
  over its own target-region tokens, then samples are averaged, so one sample's gradient never depends on another
  sample's length (required for per-sample clipping under DP-SGD).
* Tasks (explicit mix): ``joint`` (both regions are targets), ``text_to_image`` (report clean, image target),
  ``image_to_text`` (image clean, report target), ``prompt`` (a report prefix clean, the rest target). With
  probability ``cond_drop`` a conditional task's clean condition is replaced by [MASK] (the CFG branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medim.config import DiffusionConfig
from medim.tokenize.vocab import Vocab

TASKS = ("joint", "text_to_image", "image_to_text", "prompt")
JOINT, TEXT_TO_IMAGE, IMAGE_TO_TEXT, PROMPT = range(len(TASKS))


def mask_prob(t: torch.Tensor, eps: float) -> torch.Tensor:
    """Probability that a token is masked at time t [B] -> [B]."""
    return (1 - eps) * t


def sigma_of(t: torch.Tensor, eps: float) -> torch.Tensor:
    """Total noise sigma(t) = -log(1 - (1 - eps) t), t [B] -> [B]."""
    return -torch.log1p(-(1 - eps) * t)


def sample_t(batch: int, t_min: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Low-discrepancy times [B] in [t_min, 1): one uniform offset, then evenly spaced strata."""
    u = torch.rand((), generator=generator)
    strata = (u + torch.arange(batch, dtype=torch.float32) / batch) % 1.0
    return t_min + (1 - t_min) * strata


@dataclass
class NoisedBatch:
    """A training batch after q(x_t | x_0).

    x0, xt: LongTensor [B, L]; t, sigma: FloatTensor [B]; task: LongTensor [B] (index into TASKS);
    target: BoolTensor [B, L] (positions whose prediction is scored: the task's target region);
    masked: BoolTensor [B, L] (positions that are [MASK] in x_t).
    """

    x0: torch.Tensor
    xt: torch.Tensor
    t: torch.Tensor
    sigma: torch.Tensor
    task: torch.Tensor
    target: torch.Tensor
    masked: torch.Tensor


def target_regions(task: torch.Tensor, vocab: Vocab, prompt_tokens: int) -> torch.Tensor:
    """BoolTensor [B, L]: each sample's target region for its task [B]."""
    image = vocab.image_positions().to(task.device)
    text = vocab.text_positions().to(task.device)
    prefix = torch.zeros_like(text)
    start = vocab.text_slice.start
    prefix[start : start + min(prompt_tokens, vocab.text_tokens - 1)] = True
    by_task = torch.stack([image | text, image, text, (image | text) & ~prefix])  # [4, L]
    return by_task[task]


def add_noise(
    x0: torch.Tensor,
    vocab: Vocab,
    cfg: DiffusionConfig,
    *,
    t: torch.Tensor | None = None,
    task: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> NoisedBatch:
    """Sample tasks and times (unless given) and mask x0 [B, L] accordingly."""
    batch = x0.shape[0]
    if t is None:
        t = sample_t(batch, cfg.t_min, generator)
    if task is None:
        task = torch.multinomial(torch.tensor(cfg.task_probs), batch, replacement=True, generator=generator)
    target = target_regions(task, vocab, cfg.prompt_tokens)
    condition = (vocab.image_positions() | vocab.text_positions())[None, :] & ~target
    drop = (torch.rand(batch, generator=generator) < cfg.cond_drop) & (task != JOINT)
    hit = torch.rand(x0.shape, generator=generator) < mask_prob(t, cfg.eps)[:, None]
    masked = (hit & target) | (condition & drop[:, None])
    xt = torch.where(masked, torch.full_like(x0, vocab.mask), x0)
    return NoisedBatch(x0=x0, xt=xt, t=t, sigma=sigma_of(t, cfg.eps), task=task, target=target, masked=masked)


@dataclass
class Loss:
    """Diffusion loss. ``total`` = mean over samples of ``per_sample`` [B]; ``image + text == total``."""

    total: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    per_sample: torch.Tensor


def diffusion_loss(logits: torch.Tensor, batch: NoisedBatch, vocab: Vocab) -> Loss:
    """1/t-weighted cross-entropy on masked target tokens, averaged per sample over its target tokens.

    Args:
        logits: FloatTensor [B, L, V] (may hold -inf at ids a position cannot emit).
        batch: the noised batch the logits were computed from.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, batch.x0[..., None]).squeeze(-1)  # [B, L]
    return loss_from_nll(nll, batch, vocab)


def loss_from_nll(nll: torch.Tensor, batch: NoisedBatch, vocab: Vocab) -> Loss:
    """The diffusion loss from per-position ``-log p(x0)`` nll [B, L] (only masked target positions are read).

    ``diffusion_loss(logits, ...)`` and ``loss_from_nll(model.scored_nll(...), ...)`` (no [B, L, V] logits) agree.
    """
    scored = batch.masked & batch.target  # [B, L]
    nll = torch.where(scored, nll, torch.zeros_like(nll))
    scale = 1.0 / (batch.t * batch.target.sum(dim=1).clamp(min=1))  # [B]
    image = (nll * vocab.image_positions().to(nll.device)).sum(dim=1) * scale
    text = (nll * vocab.text_positions().to(nll.device)).sum(dim=1) * scale
    per_sample = image + text
    return Loss(total=per_sample.mean(), image=image.mean(), text=text.mean(), per_sample=per_sample)
