"""Privacy evidence, measured rather than assumed: three attacks a curious coordinator or model user could run.

- **Membership inference** (loss threshold, Yeom et al.): score each record by minus its per-sample diffusion loss on
  a fixed grid of times with fixed masks; members (the training records) should score higher than non-members.
  Reported as ROC AUC and TPR at 1% / 10% FPR (with few records the 1% point is coarse: 1/N resolution).
- **Gradient leakage of one record**: a single-record update of the new-token embedding rows (``new_embed``) is
  non-zero exactly on the rows of the tokens the record's input contains, so a coordinator could read which image
  codes a record holds. Scored as the ROC AUC of row-update norms for present vs absent codes and the
  correlation (centred cosine) between row norms and the record's code-presence vector, for the raw gradient and
  after DP-SGD's clipping and noise (one step, batch of one).
- **Memorisation**: n-gram overlap of generated reports with the training reports (max 4-gram Jaccard per report,
  share of reports with a verbatim 8-gram from training), next to the same numbers for held-out real reports, so
  template overlap of the synthetic reports is not mistaken for memorisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medim.config import DiffusionConfig
from medim.diffusion import JOINT, add_noise, diffusion_loss
from medim.model.medim import MeDiM

T_GRID = (0.25, 0.5, 0.75)


@torch.no_grad()
def per_sample_losses(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    t_grid: tuple[float, ...] = T_GRID,
    seed: int = 0,
) -> torch.Tensor:
    """FloatTensor [N]: each row's joint-task loss of x0 [N, L], averaged over ``t_grid`` (fixed masks per seed)."""
    model.eval()
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i, t_value in enumerate(t_grid):
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        n = x0.shape[0]
        batch = add_noise(
            x0,
            model.vocab,
            diffusion,
            t=torch.full((n,), t_value),
            task=torch.full((n,), JOINT),
            generator=generator,
        )
        total += diffusion_loss(model(batch.xt, batch.sigma), batch, model.vocab).per_sample.double()
    return (total / len(t_grid)).float()


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a positive > score of a negative) + half the ties (Mann-Whitney U / (n_pos * n_neg))."""
    if not positive or not negative:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in positive for q in negative)
    return wins / (len(positive) * len(negative))


def tpr_at_fpr(positive: Sequence[float], negative: Sequence[float], fpr: float) -> float:
    """True-positive rate of the strictest threshold whose false-positive rate is at most ``fpr``."""
    if not positive or not negative:
        return math.nan
    allowed = math.floor(fpr * len(negative))
    ranked = sorted(negative, reverse=True)
    threshold = ranked[allowed] if allowed < len(ranked) else -math.inf
    return sum(p > threshold for p in positive) / len(positive)


@dataclass
class MembershipResult:
    """Loss-threshold membership inference: AUC, TPR at 1% and 10% FPR, mean losses, record counts."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_10pct_fpr: float
    member_loss: float
    nonmember_loss: float
    members: int
    nonmembers: int


def membership_inference(
    model: MeDiM,
    members: torch.Tensor,
    nonmembers: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    seed: int = 0,
) -> MembershipResult:
    """Attack ``model`` with the loss threshold: members [M, L] (trained on) vs non-members [K, L]."""
    inside = per_sample_losses(model, members, diffusion=diffusion, seed=seed)
    outside = per_sample_losses(model, nonmembers, diffusion=diffusion, seed=seed)
    pos, neg = (-inside).tolist(), (-outside).tolist()
    return MembershipResult(
        auc=roc_auc(pos, neg),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        tpr_at_10pct_fpr=tpr_at_fpr(pos, neg, 0.10),
        member_loss=float(inside.mean()),
        nonmember_loss=float(outside.mean()),
        members=int(members.shape[0]),
        nonmembers=int(nonmembers.shape[0]),
    )


@dataclass
class LeakageResult:
    """How well one record's image codes can be read off its update of the new-token embedding rows."""

    auc: float
    correlation: float
    present: int
    rows: int


def token_leakage(
    model: MeDiM,
    record: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    noise_multiplier: float,
    max_grad_norm: float,
    t: float = 0.5,
    seed: int = 0,
) -> LeakageResult:
    """Probe the single-record update of ``model.new_embed`` rows for record [L].

    The gradient over all trainable tensors is clipped to ``max_grad_norm`` (flat) and Gaussian noise of std
    ``noise_multiplier * max_grad_norm`` is added, as one DP-SGD step with a batch of one would
    (``noise_multiplier=0`` and a huge clip give the raw gradient). Ground truth: the image codes in ``record``.
    """
    vocab = model.vocab
    generator = torch.Generator().manual_seed(seed)
    batch = add_noise(
        record[None],
        vocab,
        diffusion,
        t=torch.full((1,), t),
        task=torch.full((1,), JOINT),
        generator=generator,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    model.zero_grad(set_to_none=True)
    diffusion_loss(model(batch.xt, batch.sigma), batch, vocab).total.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    norm = torch.cat([g.double().reshape(-1) for g in grads]).norm()
    scale = min(1.0, max_grad_norm / (float(norm) + 1e-12))
    embed = model.new_embed.weight.grad
    assert embed is not None
    update = embed * scale
    if noise_multiplier > 0:
        update = update + torch.randn(update.shape, generator=generator) * noise_multiplier * max_grad_norm
    model.zero_grad(set_to_none=True)
    first_code = vocab.image_offset - vocab.text_size
    rows = update[first_code : first_code + vocab.codebook_size].norm(dim=1)  # [codebook]
    codes = vocab.image_codes(record)
    present = torch.zeros(vocab.codebook_size, dtype=torch.bool)
    present[codes[codes >= 0]] = True
    centred = rows.double() - rows.double().mean(), present.double() - present.double().mean()
    correlation = torch.nn.functional.cosine_similarity(*centred, dim=0)
    return LeakageResult(
        auc=roc_auc(rows[present].tolist(), rows[~present].tolist()),
        correlation=float(correlation),
        present=int(present.sum()),
        rows=vocab.codebook_size,
    )


@dataclass
class MemorisationResult:
    """N-gram overlap of some reports with the training reports."""

    reports: int
    mean_max_jaccard: float
    max_jaccard: float
    verbatim_fraction: float
    n: int
    verbatim_n: int


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def memorisation(
    reports: Sequence[str], training: Sequence[str], *, n: int = 4, verbatim_n: int = 8
) -> MemorisationResult:
    """For each report: its largest n-gram Jaccard with any training report, and whether it shares a verbatim
    ``verbatim_n``-gram with one; summarised over ``reports``."""
    train_sets = [ngrams(t, n) for t in training]
    train_long = set().union(*(ngrams(t, verbatim_n) for t in training)) if training else set()
    best: list[float] = []
    verbatim = 0
    for report in reports:
        grams = ngrams(report, n)
        scores = [len(grams & g) / len(grams | g) for g in train_sets if grams | g]
        best.append(max(scores, default=0.0))
        verbatim += bool(ngrams(report, verbatim_n) & train_long)
    count = len(best)
    return MemorisationResult(
        reports=count,
        mean_max_jaccard=sum(best) / count if count else math.nan,
        max_jaccard=max(best, default=math.nan),
        verbatim_fraction=verbatim / count if count else math.nan,
        n=n,
        verbatim_n=verbatim_n,
    )
