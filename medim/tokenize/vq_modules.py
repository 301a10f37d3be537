"""Encoder and decoder of the VQGAN family, with taming-transformers' module layout and parameter names.

The parameter names (``down.{i}.block.{j}.conv1.weight``, ``mid.attn_1.q.weight``, ``up.{i}.upsample.conv``,
...) are the ones in taming/Chameleon checkpoints, so their ``state_dict`` loads without renaming. Only the
ResnetBlock without a time embedding and vanilla (single-head, full) attention are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a 1x1 shortcut when channels change. [B,Ci,H,W]->[B,Co,H,W]."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual. [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B,1,HW,C], scale 1/sqrt(C)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 conv3x3 after padding right/bottom by one (taming's asymmetric padding). [B,C,H,W]->[B,C,H/2,W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv3x3. [B,C,H,W] -> [B,C,2H,2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (possibly empty) and an optional resampler."""

    def __init__(
        self,
        blocks: list[ResnetBlock],
        attns: list[AttnBlock],
        *,
        downsample: Downsample | None = None,
        upsample: Upsample | None = None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.downsample = downsample
        self.upsample = upsample

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, *, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups=groups, dropout=dropout)
        self.attn_1 = AttnBlock(channels, groups=groups)
        self.block_2 = ResnetBlock(channels, channels, groups=groups, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image [B,in_channels,R,R] -> latent [B,z_channels,R/f,R/f] with f = 2**(len(ch_mult)-1)."""

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        resolution: int,
        z_channels: int,
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels: list[_Level] = []
        res = resolution
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks: list[ResnetBlock] = []
            attns: list[AttnBlock] = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups=groups, dropout=dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, groups=groups))
            last = i == len(ch_mult) - 1
            levels.append(_Level(blocks, attns, downsample=None if last else Downsample(block_in)))
            if not last:
                res //= 2
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(block_in, groups=groups, dropout=dropout)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            assert isinstance(level, _Level)
            h = level.run_blocks(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B,z_channels,r,r] -> image [B,out_ch,r*f,r*f]; ``num_res_blocks + 1`` blocks per level."""

    def __init__(
        self,
        *,
        out_ch: int,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        resolution: int,
        z_channels: int,
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, groups=groups, dropout=dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks: list[ResnetBlock] = []
            attns: list[AttnBlock] = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, groups=groups, dropout=dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, groups=groups))
            levels.insert(0, _Level(blocks, attns, upsample=Upsample(block_in) if i != 0 else None))
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            assert isinstance(level, _Level)
            h = level.run_blocks(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
