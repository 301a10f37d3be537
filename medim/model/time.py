"""Continuous-time conditioning: sigma(t) -> sinusoidal features -> MLP -> AdaLN shift/scale/gate.

Every decoder layer is modulated DiT-style after its own norms::

    h = h + (1 + g_a) * Attn(norm_a(h) * (1 + s_a) + b_a)
    h = h + (1 + g_m) * MLP(norm_m(h) * (1 + s_m) + b_m)

The modulation's last linear map starts at zero, so (b, s, g) = 0 at initialisation and a pretrained backbone
computes exactly what it computed before (MeDiM's released code instead gates the branches with g, which
switches every pretrained residual branch off at the start). Two forms:

* ``per_layer``: each layer has its own ``SiLU -> Linear(H, 6H)`` (6H^2 parameters per layer);
* ``single`` (adaLN-single): one shared ``SiLU -> Linear(H, 6H)`` plus a learned per-layer offset (6H per layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

N_MOD = 6  # shift_a, scale_a, gate_a, shift_m, scale_m, gate_m


def sinusoidal(sigma: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a continuous scalar.

    Args:
        sigma: FloatTensor [B].
        dim: even feature size.
    Returns:
        FloatTensor [B, dim]: ``[cos(sigma * f_k), sin(sigma * f_k)]`` with geometric frequencies f_k.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
    )
    angles = sigma.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """sigma [B] -> conditioning vector c [B, H]: sinusoidal(dim) -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        feats = sinusoidal(sigma, self.dim).to(self.fc1.weight.dtype)
        return self.fc2(self.act(self.fc1(feats)))


class PerLayerAdaLN(nn.Module):
    """c [B, H] -> modulation [B, n_layers, 6, H], one zero-initialised ``Linear(H, 6H)`` per layer."""

    def __init__(self, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.act = nn.SiLU()
        self.proj = nn.ModuleList(nn.Linear(hidden, N_MOD * hidden) for _ in range(n_layers))
        for lin in self.proj:
            assert isinstance(lin, nn.Linear)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = self.act(c)
        return torch.stack([lin(a).view(-1, N_MOD, self.hidden) for lin in self.proj], dim=1)


class SharedAdaLN(nn.Module):
    """adaLN-single: c [B, H] -> [B, n_layers, 6, H] = shared ``Linear(H, 6H)`` + per-layer offset.

    The offset table is an ``nn.Embedding(n_layers, 6H)`` looked up per sample so that per-sample gradient
    engines (Opacus) handle it like any embedding.
    """

    def __init__(self, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.act = nn.SiLU()
        self.shared = nn.Linear(hidden, N_MOD * hidden)
        self.offset = nn.Embedding(n_layers, N_MOD * hidden)
        nn.init.zeros_(self.shared.weight)
        nn.init.zeros_(self.shared.bias)
        nn.init.zeros_(self.offset.weight)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        batch = c.shape[0]
        shared = self.shared(self.act(c)).view(batch, 1, N_MOD, self.hidden)
        layer_ids = torch.arange(self.n_layers, device=c.device).expand(batch, self.n_layers).contiguous()
        offset = self.offset(layer_ids).view(batch, self.n_layers, N_MOD, self.hidden)
        return shared + offset


def make_adaln(kind: str, hidden: int, n_layers: int) -> nn.Module:
    """The modulation network named by ``model.adaln`` ("per_layer" or "single")."""
    if kind == "per_layer":
        return PerLayerAdaLN(hidden, n_layers)
    if kind == "single":
        return SharedAdaLN(hidden, n_layers)
    raise ValueError(f"model.adaln={kind!r} is invalid: allowed per_layer, single")
