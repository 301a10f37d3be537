"""MaskGIT sampling with classifier-free guidance for MeDiM's tasks.

Start from a sequence whose generated positions are [MASK] and whose condition (if any) is copied in. For
step k of K, with r = (k+1)/K, the number of positions left masked is ``floor(n * 2/pi * arccos(r))`` (the arccos
profile: slow at first, fast at the end). Candidates are drawn from the (guided) distribution; confidence is
``log p(candidate) + confidence_noise * Gumbel * t``; the most confident masked positions are committed; committed
and given tokens are never changed. The last step commits everything by argmax.

Guidance: the unconditional pass sees the same x_t with the condition replaced by [MASK];
``logits = (1 + w) l_cond - w l_uncond`` with ``w = cfg * (1 - t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medim.config import SamplerConfig
from medim.diffusion import sigma_of
from medim.model.medim import MeDiM
from medim.tokenize.vocab import Vocab

SAMPLING_EPS = 1e-3


@dataclass
class Prompt:
    """Starting point of a sampling run: x [B, L] with [MASK] where to generate; condition [B, L] marks given
    content tokens that the unconditional (CFG) branch hides."""

    x: torch.Tensor
    condition: torch.Tensor


def _blank(vocab: Vocab, batch: int) -> torch.Tensor:
    x = torch.full((batch, vocab.seq_len), vocab.mask, dtype=torch.long)
    x[:, 0] = vocab.boi
    x[:, vocab.image_tokens + 1] = vocab.eoi
    return x


def joint_prompt(vocab: Vocab, batch: int) -> Prompt:
    """Unconditional image-report pairs."""
    x = _blank(vocab, batch)
    return Prompt(x, torch.zeros_like(x, dtype=torch.bool))


def text_to_image_prompt(vocab: Vocab, x0: torch.Tensor) -> Prompt:
    """Images for the reports in x0 [B, L] (its text region is kept, its image region generated)."""
    x = _blank(vocab, x0.shape[0])
    x[:, vocab.text_slice] = x0[:, vocab.text_slice]
    return Prompt(x, vocab.text_positions()[None, :].expand_as(x).clone())


def image_to_text_prompt(vocab: Vocab, x0: torch.Tensor) -> Prompt:
    """Reports for the images in x0 [B, L]."""
    x = _blank(vocab, x0.shape[0])
    x[:, vocab.image_slice] = x0[:, vocab.image_slice]
    return Prompt(x, vocab.image_positions()[None, :].expand_as(x).clone())


def prompted_pair_prompt(vocab: Vocab, prefixes: list[list[int]]) -> Prompt:
    """Image-report pairs whose report starts with the given text ids (one prefix per sample)."""
    x = _blank(vocab, len(prefixes))
    condition = torch.zeros_like(x, dtype=torch.bool)
    start = vocab.text_slice.start
    for b, ids in enumerate(prefixes):
        ids = ids[: vocab.text_tokens - 1]
        x[b, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        condition[b, start : start + len(ids)] = True
    return Prompt(x, condition)


def masked_after(step: int, steps: int, total: torch.Tensor) -> torch.Tensor:
    """Positions still masked after ``step`` (0-based) of ``steps``, for ``total`` [B] generated positions."""
    r = (step + 1) / steps
    return torch.floor(total.float() * (2 / math.pi) * math.acos(min(r, 1.0))).long()


def _gumbel(shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def sample(
    model: MeDiM,
    prompt: Prompt,
    cfg: SamplerConfig,
    *,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill every [MASK] of ``prompt.x`` [B, L]; returns LongTensor [B, L]."""
    vocab = model.vocab
    x = prompt.x.clone()
    todo = x == vocab.mask
    total = todo.sum(dim=1)
    guided = cfg.cfg > 0 and bool(prompt.condition.any())
    allowed = model.allowed
    for step in range(cfg.steps):
        masked = x == vocab.mask
        if not masked.any():
            break
        t = (masked.sum(dim=1).float() / total.clamp(min=1).float()).clamp(min=SAMPLING_EPS)
        sigma = sigma_of(t, eps)
        logits = model(x, sigma)
        if guided:
            uncond = torch.where(prompt.condition, torch.full_like(x, vocab.mask), x)
            w = (cfg.cfg * (1 - t))[:, None, None]
            mixed = (1 + w) * logits - w * model(uncond, sigma)
            logits = torch.where(allowed, mixed, torch.full_like(mixed, float("-inf")))
        logp = torch.log_softmax(logits / cfg.temperature, dim=-1)
        last = step == cfg.steps - 1
        if last:
            cand = logp.argmax(dim=-1)
        else:
            flat = logp.exp().view(-1, logp.shape[-1])
            cand = torch.multinomial(flat, 1, generator=generator).view(x.shape)
        conf = logp.gather(-1, cand[..., None]).squeeze(-1)
        conf = conf + cfg.confidence_noise * t[:, None] * _gumbel(conf.shape, generator)
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
        keep = torch.zeros(x.shape[0], dtype=torch.long) if last else masked_after(step, cfg.steps, total)
        keep = torch.minimum(keep, masked.sum(dim=1) - 1).clamp(min=0)
        order = conf.argsort(dim=1)  # least confident first
        rank = order.argsort(dim=1)
        stay = rank < keep[:, None]
        commit = masked & ~stay
        x = torch.where(commit, cand, x)
    return x
