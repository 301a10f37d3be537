"""Reconstruction quality of a tokenizer on held-out images: PSNR, SSIM, codebook usage, a side-by-side grid.

Metrics are computed per modality on [0, 1] images at the tokenizer resolution: chest X-rays on one channel
(the decoded RGB averaged back to gray), pathology on RGB. PSNR and SSIM are per-image means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medim.tokenize.vq import MODALITIES, VQTokenizer, to_modality, write_json
from medim.tokenize.vq_data import ImageSet
from medim.tokenize.vq_quantizer import codebook_stats

REPORT_JSON = "reconstruction.json"
REPORT_PNG = "reconstruction.png"


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images [B,C,H,W] in [0, 1] -> [B] (capped at 100 dB for identical images)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03, data range 1) of
    images [B,C,H,W] in [0, 1] -> [B]; the mean over channels and valid window positions."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    kernel = _gaussian_window(window, sigma).to(x.device).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1).float()


@dataclass
class ModalityReport:
    """Reconstruction quality on one modality's held-out images."""

    n_images: int
    psnr: float
    ssim: float
    codebook_usage: float
    codebook_perplexity: float
    codes_used: int


@dataclass
class ReconstructionReport:
    """What ``reconstruction.json`` holds (there, each modality's entry sits at the top level)."""

    modalities: dict[str, ModalityReport]
    image_tokens: int
    codebook_size: int
    codebook_usage_all: float
    fingerprint: str
    step: int


@dataclass
class Reconstruction:
    """``codes`` [N, image_tokens] int64 and decoded ``images`` float32 [N,C,R,R] in [-1, 1]."""

    codes: torch.Tensor
    images: torch.Tensor


@torch.no_grad()
def reconstruct(model: VQTokenizer, images: ImageSet, *, batch_size: int = 64) -> Reconstruction:
    """Encode and decode every image of a non-empty ``images``."""
    codes: list[torch.Tensor] = []
    recons: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        index = torch.arange(start, min(start + batch_size, len(images)))
        c = model.encode(images.batch(index))
        codes.append(c)
        recons.append(model.decode(c))
    return Reconstruction(codes=torch.cat(codes), images=torch.cat(recons))


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,C,H,W] in [-1, 1] -> uint8 [N,H,W,3]."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if arr.shape[1] == 1:
        arr = arr.expand(-1, 3, -1, -1)
    return arr.permute(0, 2, 3, 1).numpy()


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Save image rows (each [N,C,H,W] in [-1, 1], same H and W) as one PNG, a 2-pixel white gap between tiles."""
    gap = 2
    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    canvas = np.full((len(rows) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(_to_uint8(row)):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            canvas[y : y + h, x : x + w] = tile
    Image.fromarray(canvas).save(path)


def reconstruction_report(
    model: VQTokenizer, heldout: ImageSet, out: str | Path, *, step: int, grid_columns: int = 8
) -> ReconstructionReport:
    """Measure ``model`` on ``heldout`` per modality, write ``reconstruction.json`` and ``reconstruction.png``
    (per modality: a row of originals above a row of reconstructions) into ``out``."""
    out = Path(out)
    model.eval()
    per: dict[str, ModalityReport] = {}
    grid_rows: list[torch.Tensor] = []
    all_codes: list[torch.Tensor] = []
    size = model.config.codebook_size
    for modality in MODALITIES:
        subset = heldout.select(modality)
        if len(subset) == 0:
            continue
        rec = reconstruct(model, subset)
        codes = rec.codes
        original = to_modality(subset.batch(torch.arange(len(subset))), modality)
        recon = to_modality(rec.images, modality)
        x01, y01 = (original + 1) / 2, (recon + 1) / 2
        stats = codebook_stats(codes, size)
        per[modality] = ModalityReport(
            n_images=len(subset),
            psnr=round(float(psnr(x01, y01).mean()), 3),
            ssim=round(float(ssim(x01, y01).mean()), 4),
            codebook_usage=round(stats.usage, 4),
            codebook_perplexity=round(stats.perplexity, 2),
            codes_used=stats.used,
        )
        grid_rows += [original[:grid_columns], recon[:grid_columns]]
        all_codes.append(codes)
    if not per:
        raise ValueError("no held-out images (split validate/test) to measure the tokenizer on")
    report = ReconstructionReport(
        modalities=per,
        image_tokens=model.config.image_tokens,
        codebook_size=size,
        codebook_usage_all=round(codebook_stats(torch.cat(all_codes), size).usage, 4),
        fingerprint=model.fingerprint(),
        step=step,
    )
    out.mkdir(parents=True, exist_ok=True)
    payload = asdict(report)
    payload.update(payload.pop("modalities"))
    write_json(out / REPORT_JSON, payload)
    save_grid(grid_rows, out / REPORT_PNG)
    return report
