"""One id space for text and image tokens, the fixed sequence layout, and per-region output restrictions.

Ids::

    [0, text_size)                      text tokenizer ids (the backbone's own vocabulary)
    text_size + 0 .. + 4                <boi>, <eoi>, <eos>, <pad>, [MASK]
    image_offset + k, k < codebook      image code k   (image_offset = text_size + 5)

Sequence (length ``L = N + T + 2`` for ``N`` image tokens and ``T`` text positions)::

    position 0        <boi>
    positions 1..N    image codes                       (image region)
    position N+1      <eoi>
    positions N+2..   report tokens, <eos>, <pad>...    (text region, T positions)

Padding inside the text region is part of the diffusion: the model predicts ``<eos>`` and ``<pad>`` and so
decides the report length when sampling. ``<boi>`` and ``<eoi>`` are structural and never masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

N_SPECIALS = 5


@dataclass(frozen=True)
class Vocab:
    """Id layout for ``text_size`` text ids, ``codebook_size`` image codes, and the sequence geometry."""

    text_size: int
    codebook_size: int
    image_tokens: int
    text_tokens: int

    def __post_init__(self) -> None:
        for name in ("text_size", "codebook_size", "image_tokens", "text_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Vocab.{name}={getattr(self, name)} is invalid: allowed > 0")
        if self.text_tokens < 2:
            raise ValueError(f"Vocab.text_tokens={self.text_tokens} is invalid: allowed >= 2 (text + <eos>)")

    @property
    def boi(self) -> int:
        return self.text_size

    @property
    def eoi(self) -> int:
        return self.text_size + 1

    @property
    def eos(self) -> int:
        return self.text_size + 2

    @property
    def pad(self) -> int:
        return self.text_size + 3

    @property
    def mask(self) -> int:
        return self.text_size + 4

    @property
    def image_offset(self) -> int:
        return self.text_size + N_SPECIALS

    @property
    def size(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def seq_len(self) -> int:
        return self.image_tokens + self.text_tokens + 2

    @property
    def image_slice(self) -> slice:
        return slice(1, 1 + self.image_tokens)

    @property
    def text_slice(self) -> slice:
        start = self.image_tokens + 2
        return slice(start, start + self.text_tokens)

    def image_positions(self) -> torch.Tensor:
        """BoolTensor [L]: True on the image region."""
        region = torch.zeros(self.seq_len, dtype=torch.bool)
        region[self.image_slice] = True
        return region

    def text_positions(self) -> torch.Tensor:
        """BoolTensor [L]: True on the text region."""
        region = torch.zeros(self.seq_len, dtype=torch.bool)
        region[self.text_slice] = True
        return region

    def allowed_outputs(self) -> torch.Tensor:
        """BoolTensor [L, V]: which ids each position may emit. [MASK] is never allowed."""
        allowed = torch.zeros(self.seq_len, self.size, dtype=torch.bool)
        allowed[0, self.boi] = True
        allowed[self.image_tokens + 1, self.eoi] = True
        allowed[self.image_slice, self.image_offset :] = True
        allowed[self.text_slice, : self.text_size] = True
        allowed[self.text_slice, self.eos] = True
        allowed[self.text_slice, self.pad] = True
        return allowed

    def sequence(self, codes: torch.Tensor, text_ids: list[int]) -> torch.Tensor:
        """Build one clean sequence x0.

        Args:
            codes: LongTensor [N], image codes in ``[0, codebook_size)``.
            text_ids: text tokenizer ids; truncated to ``T - 1`` so ``<eos>`` always fits.
        Returns:
            LongTensor [L].
        """
        if codes.shape != (self.image_tokens,):
            raise ValueError(f"codes has shape {tuple(codes.shape)}, expected ({self.image_tokens},)")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image codes must lie in [0, {self.codebook_size})")
        body = list(text_ids[: self.text_tokens - 1])
        if any(i < 0 or i >= self.text_size for i in body):
            raise ValueError(f"text ids must lie in [0, {self.text_size})")
        text = body + [self.eos] + [self.pad] * (self.text_tokens - 1 - len(body))
        x0 = torch.empty(self.seq_len, dtype=torch.long)
        x0[0] = self.boi
        x0[self.image_slice] = codes.long() + self.image_offset
        x0[self.image_tokens + 1] = self.eoi
        x0[self.text_slice] = torch.tensor(text, dtype=torch.long)
        return x0

    def image_codes(self, x: torch.Tensor) -> torch.Tensor:
        """LongTensor [..., L] -> image codes [..., N] (a [MASK] or non-image id maps to -1)."""
        ids = x[..., self.image_slice] - self.image_offset
        return torch.where((ids >= 0) & (ids < self.codebook_size), ids, torch.full_like(ids, -1))

    def text_ids(self, x: torch.Tensor) -> list[int]:
        """LongTensor [L] -> report token ids before the first ``<eos>`` (pads and non-text ids dropped)."""
        out: list[int] = []
        for i in x[self.text_slice].tolist():
            if i == self.eos:
                break
            if 0 <= i < self.text_size:
                out.append(i)
        return out
