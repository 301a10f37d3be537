"""MaskGIT sampling with classifier-free guidance for MeDiM's tasks.

Start from a sequence whose generated positions are [MASK] and whose condition (if any) is copied in. For
step k of K, with r = (k+1)/K, the number of positions left masked is ``floor(n * 2/pi * arccos(r))`` (the arccos
profile: slow at first, fast at the end). Candidates are drawn from the (guided) distribution; confidence is
``log p(candidate) + confidence_noise * Gumbel * t``; the most confident masked positions are committed; committed
and given tokens are never changed. The last step commits everything by argmax.

Guidance: the unconditional pass sees the same x_t with the condition replaced by [MASK];
``logits = (1 + w) l_cond - w l_uncond`` with ``w = cfg * (1 - t)``.

Cost per step: one backbone pass (conditional and unconditional inputs batched together), the heads only at the
still-masked positions and only against their region's allowed ids (image codes, or text ids + ``<eos>``/``<pad>``;
the full logits are ``-inf`` elsewhere), one uniform per drawn candidate (inverse CDF), and the backbone under bf16
autocast unless ``SamplerConfig.autocast_bf16`` is off (the heads, the guidance mix and the draws stay fp32). ``python -m benchmarks --sections sampling`` measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _draw(
    logits: torch.Tensor, generator: torch.Generator | None, *, greedy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of fp32 logits [M, C]: a draw from their softmax (``greedy``: the argmax) and its log-probability,
    both [M]. The draw inverts the row's CDF (fp64) with one uniform per row; ``torch.multinomial`` draws an
    exponential variate per column instead, which was the largest per-step cost of sampling."""
    top = logits.amax(dim=-1, keepdim=True)
    p = (logits - top).exp_()
    if greedy:
        pick = logits.argmax(dim=-1)
        log_total = p.sum(dim=-1).log()
    else:
        cdf = p.double().cumsum_(dim=-1)  # (cumsum(dtype=float64) of fp32 input is several times slower)
        u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
        log_total = cdf[:, -1].log().float()
    logp = logits.gather(-1, pick[:, None]).squeeze(-1) - top.squeeze(-1) - log_total
    return pick, logp


def _regions(model: MeDiM) -> list[tuple[slice, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
    """(positions, head over the region's allowed ids, vocabulary id of each head column) per region."""
    vocab = model.vocab
    image_ids = torch.arange(vocab.image_offset, vocab.size)
    return [
        (vocab.image_slice, model.image_logits, image_ids),
        (vocab.text_slice, model.text_logits, model.text_region_ids()),
    ]


@torch.no_grad()
def sample(
    model: MeDiM,
    prompt: Prompt,
    cfg: SamplerConfig,
    *,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill every [MASK] of ``prompt.x`` [B, L]; returns LongTensor [B, L].

    Each step runs the backbone once (the conditional and unconditional inputs batched together when guided)
    and the heads only at masked positions, each against its region's allowed ids: equal to the full
    ``model(x, sigma)`` logits there, where every other id is ``-inf``.
    """
    vocab = model.vocab
    x = prompt.x.clone()
    todo = x == vocab.mask
    regions = _regions(model)
    in_region = torch.zeros(vocab.seq_len, dtype=torch.bool)
    for positions, _, _ in regions:
        in_region[positions] = True
    if bool((todo & ~in_region).any()):
        raise ValueError("[MASK] outside the image and text regions: only those positions can be generated")
    total = todo.sum(dim=1)
    guided = cfg.cfg > 0 and bool(prompt.condition.any())
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
        for step in range(cfg.steps):
            masked = x == vocab.mask
            if not masked.any():
                break
            t = (masked.sum(dim=1).float() / total.clamp(min=1).float()).clamp(min=SAMPLING_EPS)
            sigma = sigma_of(t, eps)
            if guided:
                uncond = torch.where(prompt.condition, torch.full_like(x, vocab.mask), x)
                h = model.hidden_states(torch.cat([x, uncond]), torch.cat([sigma, sigma]))
            else:
                h = model.hidden_states(x, sigma)
            x = _commit(x, masked, h, t, step, total, regions, cfg, guided, generator)
    return x


def _commit(
    x: torch.Tensor,
    masked: torch.Tensor,
    h: torch.Tensor,
    t: torch.Tensor,
    step: int,
    total: torch.Tensor,
    regions: list[tuple[slice, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]],
    cfg: SamplerConfig,
    guided: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One MaskGIT step from the hidden states h [B, L, H] ([2B, L, H] when guided: conditional first)."""
    batch = x.shape[0]
    last = step == cfg.steps - 1
    cand = x.clone()
    conf = torch.zeros(x.shape)
    for positions, head, ids in regions:
        where = masked[:, positions]
        if not where.any():
            continue
        # heads in fp32 (autocast off): guidance scales their rounding errors by 1 + 2w
        with torch.autocast(h.device.type, enabled=False):
            logits = head(h[:batch, positions][where].float())  # [M, C]: masked positions, allowed ids
            if guided:
                w = (cfg.cfg * (1 - t))[where.nonzero()[:, 0], None]  # w of each row's sample
                uncond = head(h[batch:, positions][where].float())
                logits = torch.lerp(uncond, logits, 1 + w)  # (1 + w) cond - w uncond
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        pick, logp = _draw(logits, generator, greedy=last)
        cand[:, positions][where] = ids[pick]
        conf[:, positions][where] = logp
    conf = conf + cfg.confidence_noise * t[:, None] * _gumbel(conf.shape, generator)
    conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
    keep = torch.zeros(x.shape[0], dtype=torch.long) if last else masked_after(step, cfg.steps, total)
    keep = torch.minimum(keep, masked.sum(dim=1) - 1).clamp(min=0)
    order = conf.argsort(dim=1)  # least confident first
    rank = order.argsort(dim=1)
    stay = rank < keep[:, None]
    commit = masked & ~stay
    return torch.where(commit, cand, x)
