"""Vector quantiser with a codebook, its health statistics and dead-code restarts.

Two lookups: Euclidean nearest neighbour (taming/Chameleon checkpoints) and, with ``l2_normalize``, cosine
nearest neighbour on unit vectors (ViT-VQGAN's factorised code: a low ``embed_dim`` plus normalisation keeps
most codes in use without EMA tricks). Quantisation always runs in float32, also under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    """Result of :meth:`VectorQuantizer.forward`.

    ``quantized`` [B,D,h,w]: codebook vectors with straight-through gradients to the encoder;
    ``codes`` [B,h,w] int64; ``loss``: codebook + beta * commitment (scalar);
    ``latents`` [B*h*w, D]: the encoder vectors as looked up (unit-normalised with ``l2_normalize``).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    latents: torch.Tensor


@dataclass
class CodebookStats:
    """How much of a codebook a set of codes uses: ``usage`` = used / size, ``perplexity`` = exp(entropy)."""

    used: int
    size: int
    usage: float
    perplexity: float


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> CodebookStats:
    """Usage and perplexity of ``codes`` (any shape, values in [0, codebook_size)).

    Perplexity is exp(-sum p_k log p_k) of the empirical code distribution: 1 when a single code is used,
    ``codebook_size`` when all are used equally often.
    """
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).double()
    if counts.numel() != codebook_size:
        raise ValueError(f"codes contain values >= codebook_size={codebook_size} (max {int(codes.max())})")
    total = counts.sum()
    if total == 0:
        return CodebookStats(used=0, size=codebook_size, usage=0.0, perplexity=0.0)
    p = counts[counts > 0] / total
    entropy = float(-(p * p.log()).sum())
    used = int((counts > 0).sum())
    return CodebookStats(
        used=used, size=codebook_size, usage=used / codebook_size, perplexity=math.exp(entropy)
    )


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup into ``embedding.weight`` [codebook_size, embed_dim] (taming's key name)."""

    def __init__(self, codebook_size: int, embed_dim: int, *, beta: float, l2_normalize: bool) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.beta = beta
        self.l2_normalize = l2_normalize
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        if l2_normalize:
            nn.init.normal_(self.embedding.weight)
        else:
            nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> torch.Tensor:
        """The lookup table [codebook_size, embed_dim], float32, unit rows with ``l2_normalize``."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output [B,D,h,w] -> lookup vectors [B*h*w, D] (float32, unit rows with ``l2_normalize``)."""
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        return F.normalize(flat, dim=1) if self.l2_normalize else flat

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each row of ``flat`` [N, D] -> [N] int64."""
        book = self.codebook()
        if self.l2_normalize:
            return (flat @ book.t()).argmax(dim=1)
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
        return dist.argmin(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B,h,w] -> codebook vectors [B,D,h,w] (float32)."""
        return F.embedding(codes, self.codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantise encoder output ``z`` [B,D,h,w]."""
        b, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(
                f"quantizer expects {self.embed_dim} channels, got tensor of shape {tuple(z.shape)}"
            )
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self.prepare(z)
            codes = self.nearest(flat.detach())
            chosen = F.embedding(codes, self.codebook())
            loss = F.mse_loss(chosen, flat.detach()) + self.beta * F.mse_loss(flat, chosen.detach())
            straight = flat + (chosen - flat).detach()
            quantized = straight.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return Quantized(quantized=quantized, codes=codes.reshape(b, h, w), loss=loss, latents=flat.detach())

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> int:
        """Move each code flagged in ``dead`` [codebook_size] bool onto a random row of ``candidates`` [N, D].

        Candidates are recent encoder vectors (:attr:`Quantized.latents`), so a restarted code lies where the
        data is and gets picked again. Returns the number of codes restarted.
        """
        idx = dead.nonzero().flatten()
        if idx.numel() == 0 or candidates.shape[0] == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (idx.numel(),), generator=generator)
        self.embedding.weight[idx] = candidates[pick].to(self.embedding.weight.dtype)
        return int(idx.numel())
