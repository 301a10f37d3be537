"""Image-generation metrics: FID (standard Inception-v3 pool3), Inception Score, and our domain FID / IS.

- ``fid``: Fréchet distance between the real and generated pool3 feature Gaussians of the standard FID
  Inception-v3 (:mod:`medim.metrics.inception`). Computed here rather than by torchmetrics'
  ``FrechetInceptionDistance``, whose general (non-symmetric) 2048x2048 eigensolve takes tens of seconds on a
  CPU; the tests check that both agree.
- ``is_mean`` / ``is_std``: the standard Inception Score needs the Inception logits head, which the offline
  weights lack: reported as ``None`` with the reason in ``unavailable`` (never estimated otherwise).
- ``domain_fid``: the same distance in the feature space of our synthetic-findings classifier
  (:mod:`medim.metrics.domain`); ours, not comparable to published FIDs.
- ``domain_is_mean`` / ``domain_is_std``: Inception Score (10 splits) over the tissue softmax of the pathology
  classifier (bounded by 1 and the 5 tissue types); unavailable for the multi-label CXR classifier.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.inception import InceptionScore

from medim.metrics.domain import DomainClassifier, DomainFeatures
from medim.metrics.inception import IS_UNAVAILABLE, FidInceptionV3

IMAGE_SUFFIXES = (".png",)


class _Given(nn.Module):
    """Identity on precomputed (N, d) features, for torchmetrics' Inception Score."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@dataclass(frozen=True)
class InceptionScoreResult:
    """Mean and standard deviation of the Inception Score over splits."""

    mean: float
    std: float


@dataclass(frozen=True)
class ImageScores:
    """Image metrics of a generated set against a real set; ``unavailable`` maps metric -> reason.

    ``domain_*`` are ``None`` when no domain classifier was given (then they are not in ``unavailable``).
    """

    fid: float
    is_mean: float | None
    is_std: float | None
    n_real: int
    n_fake: int
    domain_fid: float | None = None
    domain_is_mean: float | None = None
    domain_is_std: float | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative rounding noise clamped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _trace_sqrt_product(real: Tensor, fake: Tensor) -> Tensor:
    """``tr sqrt(S_r S_f)`` of the sample covariances of centred features real (N, d), fake (M, d).

    The eigenvalues of ``S_r S_f`` are the squared singular values of ``real @ fake.T`` divided by
    ``(N-1)(M-1)``, so for small sets the trace is a nuclear norm of an (N, M) matrix; otherwise it is computed
    from symmetric (d, d) eigendecompositions. Both are exact; neither needs a general eigensolver.
    """
    n, m, d = len(real), len(fake), real.shape[1]
    if min(n, m) < d:
        return torch.linalg.svdvals(real @ fake.T).sum() / ((n - 1) * (m - 1)) ** 0.5
    root = _sqrt_psd(real.T @ real / (n - 1))
    middle = root @ (fake.T @ fake / (m - 1)) @ root
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features real (N, d) and fake (M, d), N, M >= 2.

    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f)`` in float64 with unbiased covariances (as
    pytorch-fid and torchmetrics); the last term via :func:`_trace_sqrt_product`.
    """
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected features (N, d) and (M, d), got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(
            f"FID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated"
        )
    real, fake = real.double(), fake.double()
    mean_real, mean_fake = real.mean(dim=0), fake.mean(dim=0)
    real, fake = real - mean_real, fake - mean_fake
    trace_real = real.square().sum() / (len(real) - 1)
    trace_fake = fake.square().sum() / (len(fake) - 1)
    distance = (mean_real - mean_fake).square().sum() + trace_real + trace_fake
    return float(distance - 2 * _trace_sqrt_product(real, fake))


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> InceptionScoreResult:
    """Inception Score of class logits (N, K) over ``splits`` random splits, via torchmetrics.

    ``exp(E_x KL(p(y|x) || p(y)))`` per split; lies in [1, K]. ``seed`` fixes the split permutation; the
    standard deviation of a single split is 0.
    """
    if logits.dim() != 2 or len(logits) < splits:
        raise ValueError(f"expected logits (N >= {splits}, K), got {tuple(logits.shape)}")
    metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return InceptionScoreResult(float(mean), float(std) if splits > 1 else 0.0)


def load_png_folder(folder: Path) -> list[Tensor]:
    """All PNG images under ``folder`` (sorted, recursive) as uint8 tensors (C, H, W), C 1 (gray) or 3 (RGB)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {folder} has no PNG files")
    images = []
    for path in paths:
        with Image.open(path) as image:
            mode = "L" if image.mode in ("L", "I;16", "I", "1", "LA") else "RGB"
            array = np.array(image.convert(mode))
        images.append(torch.from_numpy(array[None] if mode == "L" else array.transpose(2, 0, 1).copy()))
    return images


def batches(images: Sequence[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Consecutive images (C, H, W) stacked into batches (B, C, H, W) of equal shape, B <= batch_size."""
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
            end += 1
        yield torch.stack(list(images[start:end]))
        start = end


@torch.no_grad()
def extract(extractor: nn.Module, images: Sequence[Tensor], batch_size: int = 16) -> Tensor:
    """Features (N, d) of images (C, H, W) by ``extractor``, batch by batch."""
    return torch.cat([extractor(batch).cpu() for batch in batches(images, batch_size)])


def image_scores(
    real: Sequence[Tensor],
    fake: Sequence[Tensor],
    *,
    inception: FidInceptionV3 | None = None,
    domain: DomainClassifier | None = None,
    batch_size: int = 16,
) -> ImageScores:
    """FID (and domain FID / IS with ``domain``) of generated ``fake`` against ``real`` images (C, H, W)."""
    extractor = inception or FidInceptionV3()
    fid = frechet_distance(extract(extractor, real, batch_size), extract(extractor, fake, batch_size))
    unavailable = {"is_mean": IS_UNAVAILABLE, "is_std": IS_UNAVAILABLE}
    if domain is None:
        return ImageScores(fid, None, None, len(real), len(fake), unavailable=unavailable)
    features = DomainFeatures(domain)
    domain_fid = frechet_distance(extract(features, real, batch_size), extract(features, fake, batch_size))
    domain_is: InceptionScoreResult | None = None
    if domain.spec.multilabel:
        reason = "domain Inception Score needs a single-label softmax; the CXR classifier is multi-label"
        unavailable |= {"domain_is_mean": reason, "domain_is_std": reason}
    else:
        domain_is = inception_score(extract(domain, fake, batch_size), splits=min(10, len(fake)))
    return ImageScores(
        fid,
        None,
        None,
        len(real),
        len(fake),
        domain_fid=domain_fid,
        domain_is_mean=domain_is.mean if domain_is else None,
        domain_is_std=domain_is.std if domain_is else None,
        unavailable=unavailable,
    )
