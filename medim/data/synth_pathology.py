"""Procedurally drawn H&E-like pathology patches with known tissue type, nuclear density and atypia.

Colour follows Beer-Lambert stain mixing: per-pixel hematoxylin (``H``, purple-blue nuclei) and eosin (``E``,
pink stroma and cytoplasm) concentrations become RGB as ``255 * exp(-(H * OD_h + E * OD_e))``.

- normal: round glands with white lumens lined by a single row of small, evenly spaced basal nuclei;
- adenocarcinoma: crowded, irregular glands with stratified, enlarged nuclei and debris in the lumens;
- squamous cell carcinoma: solid nests of large cells with pink cytoplasm and concentric keratin pearls;
- lymphocytic infiltrate: sheets of small, round, dark lymphocyte nuclei;
- necrosis: pale eosinophilic debris with nuclear dust and few intact nuclei.

Nuclear density scales the number of nuclei; atypia grows their size, size spread, irregularity and darkness.
All drawing is vectorised: nuclei are rasterised as stamps scattered with ``np.maximum.at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medim.data import findings as F
from medim.data.synth_cxr import smooth_noise

_OD_H = np.array([0.65, 0.70, 0.29])
_OD_E = np.array([0.07, 0.99, 0.11])
_DENSITY_SCALE = {"low": 0.45, "moderate": 1.0, "high": 1.8}
_ATYPIA = {  # radius scale, radius spread, eccentricity spread, darkness
    "mild": (1.0, 0.08, 0.1, 1.0),
    "moderate": (1.35, 0.2, 0.25, 1.2),
    "severe": (1.75, 0.35, 0.4, 1.45),
}
_DENSITY_GIVEN_TISSUE = {
    F.NORMAL: (0.6, 0.4, 0.0),
    F.ADENOCARCINOMA: (0.0, 0.4, 0.6),
    F.SQUAMOUS_CELL_CARCINOMA: (0.1, 0.5, 0.4),
    F.LYMPHOCYTIC_INFILTRATE: (0.0, 0.3, 0.7),
    F.NECROSIS: (0.8, 0.2, 0.0),
}
_ATYPIA_GIVEN_TISSUE = {
    F.NORMAL: (1.0, 0.0, 0.0),
    F.ADENOCARCINOMA: (0.0, 0.5, 0.5),
    F.SQUAMOUS_CELL_CARCINOMA: (0.0, 0.4, 0.6),
    F.LYMPHOCYTIC_INFILTRATE: (0.8, 0.2, 0.0),
    F.NECROSIS: (0.5, 0.5, 0.0),
}


@dataclass(frozen=True)
class PatchCase:
    """Ground truth of one patch: names from :mod:`medim.data.findings`."""

    tissue: str
    density: str
    atypia: str

    def as_dict(self) -> dict[str, str]:
        """``{"tissue", "density", "atypia"}`` as in :data:`medim.data.findings.PATHOLOGY_KEYS`."""
        return {"tissue": self.tissue, "density": self.density, "atypia": self.atypia}


def sample_patch_case(rng: np.random.Generator, tissue_mix: Mapping[str, float]) -> PatchCase:
    """Tissue from ``tissue_mix`` (weights, need not sum to 1); density and atypia plausible for it."""
    names = list(tissue_mix)
    weights = np.array([tissue_mix[n] for n in names], dtype=float)
    tissue = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    density = F.DENSITIES[int(rng.choice(3, p=_DENSITY_GIVEN_TISSUE[tissue]))]
    atypia = F.ATYPIA_GRADES[int(rng.choice(3, p=_ATYPIA_GIVEN_TISSUE[tissue]))]
    return PatchCase(tissue, density, atypia)


@dataclass(frozen=True)
class _Nuclei:
    """Nucleus parameters, each of shape (N,): centre (pixels), semi-axes (pixels), angle, darkness."""

    y: np.ndarray
    x: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    dark: np.ndarray


def _nuclei(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, radius: float, atypia: str) -> _Nuclei:
    scale, spread, ecc, dark = _ATYPIA[atypia]
    n = y.size
    r = radius * scale * np.exp(rng.normal(0, spread, n))
    e = np.clip(1.0 + np.abs(rng.normal(0.15, ecc, n)), 1.0, 2.2)
    return _Nuclei(
        y, x, r * np.sqrt(e), r / np.sqrt(e), rng.uniform(0, np.pi, n), dark * rng.uniform(0.85, 1.1, n)
    )


def _stamp(h: np.ndarray, nuc: _Nuclei) -> None:
    """Rasterise nuclei into the hematoxylin map ``h`` (S, S) in place (max-composited, soft edges)."""
    if nuc.y.size == 0:
        return
    k = int(np.ceil(nuc.a.max())) + 1
    off = np.arange(-k, k + 1, dtype=np.float32)
    iy, ix = np.rint(nuc.y).astype(int), np.rint(nuc.x).astype(int)
    dy = off[None, :, None] - (nuc.y - iy).astype(np.float32)[:, None, None]
    dx = off[None, None, :] - (nuc.x - ix).astype(np.float32)[:, None, None]
    c = np.cos(nuc.angle).astype(np.float32)[:, None, None]
    s = np.sin(nuc.angle).astype(np.float32)[:, None, None]
    inv_a = (1.0 / nuc.a).astype(np.float32)[:, None, None]
    inv_b = (1.0 / nuc.b).astype(np.float32)[:, None, None]
    rr = ((dy * c + dx * s) * inv_a) ** 2 + ((dx * c - dy * s) * inv_b) ** 2
    inside = rr < 1.0
    n_idx, r_idx, c_idx = np.nonzero(inside)
    value = np.clip((1.0 - np.sqrt(rr[inside])) * 4.0, 0.0, 1.0) * nuc.dark[n_idx]
    size = h.shape[0]
    rows = iy[n_idx] + r_idx - k
    cols = ix[n_idx] + c_idx - k
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    np.maximum.at(h, (rows[ok], cols[ok]), value[ok])


def _scatter(rng: np.random.Generator, mask: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random points (y, x) inside a boolean mask (S, S)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0 or count <= 0:
        return np.zeros(0), np.zeros(0)
    pick = rng.integers(ys.size, size=count)
    return ys[pick] + rng.uniform(-0.5, 0.5, count), xs[pick] + rng.uniform(-0.5, 0.5, count)


def _glands(case: PatchCase, s: int, rng: np.random.Generator, h: np.ndarray, e: np.ndarray) -> None:
    tumour = case.tissue == F.ADENOCARCINOMA
    count = int((7 if tumour else 4) * (0.7 + 0.3 * _DENSITY_SCALE[case.density]))
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    wobble = smooth_noise(rng, s, 12) - 0.5
    lumen_all = np.zeros((s, s), dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(0, s, 2)
        radius = s * (rng.uniform(0.07, 0.13) if tumour else rng.uniform(0.11, 0.14))
        stretch = rng.uniform(0.6, 1.0) if tumour else 1.0
        dist = np.hypot((yy - cy) * stretch, xx - cx) / radius + (0.9 if tumour else 0.25) * wobble
        epithelium = (dist < 1.0) & (dist >= 0.6)
        lumen = dist < 0.6
        lumen_all |= lumen
        e[epithelium] = 0.35
        h[epithelium] = np.maximum(h[epithelium], 0.12)
        ring = np.linspace(0, 2 * np.pi, int(2 * np.pi * radius / (4.5 if tumour else 6.0)), endpoint=False)
        layers = rng.uniform(0.62, 0.95, ring.size) if tumour else np.full(ring.size, 0.88)
        ny, nx = cy + np.sin(ring) * radius * layers / stretch, cx + np.cos(ring) * radius * layers
        _stamp(h, _nuclei(rng, ny, nx, s * 0.011, case.atypia))
    e[lumen_all] = 0.12 if tumour else 0.0
    h[lumen_all] = np.where(rng.random(int(lumen_all.sum())) < (0.08 if tumour else 0.0), 0.8, 0.0)


def draw_patch(case: PatchCase, *, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one patch: uint8 RGB array (size, size, 3)."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    theta = rng.uniform(0, np.pi)
    fibres = 0.5 + 0.5 * np.sin(
        (xx * np.cos(theta) + yy * np.sin(theta)) * 0.35 + 8 * smooth_noise(rng, s, 6)
    )
    e = 0.5 + 0.12 * fibres + 0.1 * smooth_noise(rng, s, 16)
    h = 0.04 * smooth_noise(rng, s, 20)
    density = _DENSITY_SCALE[case.density]
    area = s * s / 256.0**2
    stroma = np.ones((s, s), dtype=bool)
    if case.tissue in (F.NORMAL, F.ADENOCARCINOMA):
        _glands(case, s, rng, h, e)
        stroma = h < 0.1
        count = int(area * density * (40 if case.tissue == F.NORMAL else 90))
    elif case.tissue == F.SQUAMOUS_CELL_CARCINOMA:
        nests = smooth_noise(rng, s, 5) > 0.45
        e = np.where(nests, 0.75 + 0.1 * smooth_noise(rng, s, 30), e)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = _scatter(rng, nests, 1)
            if cy.size:
                r = np.hypot(yy - cy[0], xx - cx[0])
                pearl = r < s * 0.09
                e = np.where(pearl, 0.95 + 0.25 * np.sin(r * 1.2), e)
                nests &= ~pearl
        y, x = _scatter(rng, nests, int(area * density * 260))
        _stamp(h, _nuclei(rng, y, x, s * 0.014, case.atypia))
        count = int(area * density * 30)
    elif case.tissue == F.LYMPHOCYTIC_INFILTRATE:
        y, x = _scatter(rng, stroma, int(area * density * 700))
        _stamp(h, _nuclei(rng, y, x, s * 0.009, case.atypia))
        count = 0
    else:  # necrosis
        e = 0.55 + 0.25 * smooth_noise(rng, s, 10)
        y, x = _scatter(rng, stroma, int(area * 900))
        dust = _Nuclei(
            y,
            x,
            np.full(y.size, 1.4),
            np.full(y.size, 1.0),
            rng.uniform(0, np.pi, y.size),
            0.7 * np.ones(y.size),
        )
        _stamp(h, dust)
        count = int(area * density * 60)
    y, x = _scatter(rng, stroma, count)
    _stamp(h, _nuclei(rng, y, x, s * 0.011, case.atypia))
    h *= 0.8 + 0.2 * smooth_noise(rng, s, 64)  # chromatin texture
    od = 1.35 * h[..., None] * _OD_H + 0.8 * e[..., None] * _OD_E
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 3.0, (s, s, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
