"""Procedurally drawn chest radiographs with known findings (vectorised numpy, no external assets).

:func:`sample_case` draws the findings of one study from per-finding prevalences; :func:`draw_cxr` renders a
frontal (PA/AP) or lateral view as a *density* image in [0, 1] (bright = radiodense, i.e. how a MONOCHROME2
display shows it). Anatomy is placed in coordinates normalised by the image height; the patient's right is on
the image's left in frontal views (radiological convention), anterior is on the image's left in laterals.

Findings are drawn large enough to be visible after downsampling to 64x64: cardiomegaly widens the heart
(cardiothoracic ratio ~0.45 normal vs 0.55-0.65), an effusion fills the costophrenic region with soft-tissue
density under a meniscus, a pneumothorax replaces the lateral/apical lung by darker air without vessel markings
behind a thin pleural line, consolidation is a patchy dense region of one lobe, a nodule a dense round spot, and
support devices are radiopaque lines or a pacemaker can. :func:`measure_frontal` measures these back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from medim.data import findings as F

SIZES = ("small", "moderate", "large")
CARDIOMEGALY_GRADES = {"mild": 0.56, "moderate": 0.61, "severe": 0.66}
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
ZONES = ("upper", "mid", "lower")
DEVICES = ("endotracheal tube", "nasogastric tube", "right internal jugular catheter", "pacemaker")
NORMAL_CTR = 0.44

_LUNG, _AIR, _SOFT, _HEART, _BONE, _METAL = 0.2, 0.06, 0.55, 0.7, 0.14, 0.95
_EFFUSION_HEIGHT = {"small": 0.09, "moderate": 0.17, "large": 0.27}
_PTX_COLLAPSE = {"small": 0.2, "moderate": 0.32, "large": 0.45}


@dataclass(frozen=True)
class Nodule:
    """A pulmonary nodule: patient side, lung zone, size in millimetres."""

    side: str
    zone: str
    size_mm: int


@dataclass(frozen=True)
class CxrCase:
    """The findings of one study and the drawing parameters that realise them.

    ``*_effusion`` / ``*_pneumothorax`` hold a size from :data:`SIZES` or ``None``; ``cardiomegaly`` a grade
    from :data:`CARDIOMEGALY_GRADES` or ``None``; ``devices`` names from :data:`DEVICES`.
    """

    cardiomegaly: str | None = None
    left_effusion: str | None = None
    right_effusion: str | None = None
    left_pneumothorax: str | None = None
    right_pneumothorax: str | None = None
    consolidation_lobe: str | None = None
    nodule: Nodule | None = None
    devices: tuple[str, ...] = field(default_factory=tuple)

    @property
    def findings(self) -> frozenset[str]:
        """Canonical finding names (:data:`medim.data.findings.CXR_FINDINGS`) of this case."""
        present = {
            F.CARDIOMEGALY: self.cardiomegaly,
            F.LEFT_PLEURAL_EFFUSION: self.left_effusion,
            F.RIGHT_PLEURAL_EFFUSION: self.right_effusion,
            F.LEFT_PNEUMOTHORAX: self.left_pneumothorax,
            F.RIGHT_PNEUMOTHORAX: self.right_pneumothorax,
            F.CONSOLIDATION: self.consolidation_lobe,
            F.NODULE: self.nodule,
            F.SUPPORT_DEVICE: self.devices or None,
        }
        names = {name for name, value in present.items() if value is not None}
        if not names & set(F.CXR_PATHOLOGIES):
            names.add(F.NO_FINDING)
        return frozenset(names)

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio drawn for this case."""
        return CARDIOMEGALY_GRADES[self.cardiomegaly] if self.cardiomegaly else NORMAL_CTR

    def details(self) -> dict[str, object]:
        """JSON-ready finding attributes (sizes, lobe, nodule, devices) for the ground-truth file."""
        out: dict[str, object] = {}
        for key in (
            "cardiomegaly",
            "left_effusion",
            "right_effusion",
            "left_pneumothorax",
            "right_pneumothorax",
        ):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.consolidation_lobe:
            out["consolidation_lobe"] = self.consolidation_lobe
        if self.nodule:
            out["nodule"] = {
                "side": self.nodule.side,
                "zone": self.nodule.zone,
                "size_mm": self.nodule.size_mm,
            }
        if self.devices:
            out["devices"] = list(self.devices)
        return out


def sample_case(rng: np.random.Generator, prevalence: Mapping[str, float]) -> CxrCase:
    """Draw one study's findings: each pathology/device independently with its prevalence (missing = 0)."""

    def has(name: str) -> bool:
        return bool(rng.random() < prevalence.get(name, 0.0))

    def size() -> str:
        return str(rng.choice(SIZES, p=[0.5, 0.35, 0.15]))

    nodule = None
    if has(F.NODULE):
        nodule = Nodule(str(rng.choice(["left", "right"])), str(rng.choice(ZONES)), int(rng.integers(8, 19)))
    devices: tuple[str, ...] = ()
    if has(F.SUPPORT_DEVICE):
        count = int(rng.choice([1, 1, 2, 3]))
        devices = tuple(sorted(str(d) for d in rng.choice(DEVICES, size=count, replace=False)))
    return CxrCase(
        cardiomegaly=str(rng.choice(list(CARDIOMEGALY_GRADES))) if has(F.CARDIOMEGALY) else None,
        left_effusion=size() if has(F.LEFT_PLEURAL_EFFUSION) else None,
        right_effusion=size() if has(F.RIGHT_PLEURAL_EFFUSION) else None,
        left_pneumothorax=size() if has(F.LEFT_PNEUMOTHORAX) else None,
        right_pneumothorax=size() if has(F.RIGHT_PNEUMOTHORAX) else None,
        consolidation_lobe=str(rng.choice(LOBES)) if has(F.CONSOLIDATION) else None,
        nodule=nodule,
        devices=devices,
    )


def smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Bilinearly interpolated uniform noise in [0, 1], shape (n, n), with ``cells`` features per side."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, n)
    i = np.minimum(t.astype(int), cells - 1)
    f = (t - i)[:, None]
    rows = grid[i] * (1 - f) + grid[i + 1] * f
    return (rows[:, i] * (1 - f.T) + rows[:, i + 1] * f.T).astype(np.float32)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def _polyline(x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Distance from every pixel to a polyline given as (x, y) vertices; shape of ``x``."""
    best = np.full(x.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        best = np.minimum(best, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return best


def _soft(mask_distance: np.ndarray, width: float) -> np.ndarray:
    """1 inside (distance < 0), ramping to 0 over ``width``."""
    return np.clip(0.5 - mask_distance / width, 0.0, 1.0)


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding; shape preserved."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    out = np.zeros_like(img)
    for i in range(3):
        for j in range(3):
            out += p[i : i + h, j : j + w]
    return out / 9.0


def _frontal(case: CxrCase, n: int, rng: np.random.Generator) -> np.ndarray:
    y, x = (np.mgrid[0:n, 0:n] / float(n)).astype(np.float32)
    xm = 0.5 + rng.normal(0, 0.01)
    half = 0.35 + rng.normal(0, 0.012)  # thoracic half-width
    dome = 0.69 + rng.normal(0, 0.01)
    body = (((x - xm) / 0.47) ** 4 + ((y - 0.58) / 0.56) ** 4 < 1) | ((np.abs(x - xm) < 0.1) & (y < 0.1))
    d = np.where(body, _SOFT, 0.0)
    sides = {"right": -1.0, "left": 1.0}  # patient side -> image direction
    lungs = {}
    for side, sign in sides.items():
        cx = xm + sign * half * 0.52
        diaphragm = dome + (0.02 if side == "left" else 0.0) + 0.5 * ((x - cx) / half) ** 2
        shape = (_ellipse(x, y, cx, 0.47, half * 0.5, 0.36) < 1) & (y < diaphragm)
        lungs[side] = shape & (sign * (x - xm) > 0.05)
    heart_hw = case.ctr * half
    mediastinum = (_ellipse(x, y, xm + 0.25 * heart_hw, dome - 0.1, heart_hw, 0.12) < 1) & (y < dome + 0.02)
    mediastinum |= (np.abs(x - xm) < 0.06) & (y < dome)
    mediastinum |= _ellipse(x, y, xm + 0.05, 0.33, 0.06, 0.05) < 1  # aortic knob
    lung_any = (lungs["left"] | lungs["right"]) & ~mediastinum
    markings = 0.1 * smooth_noise(rng, n, 24) * np.exp(-np.abs(x - xm) / 0.25)
    d = np.where(lung_any, _LUNG + markings, d)
    d = np.where(mediastinum, _HEART, d)
    d = np.where((np.abs(x - xm) < 0.014) & (y < 0.3), _LUNG, d)  # trachea
    # Ribs, clavicles, spine.
    bend = y - 0.12 * (np.abs(x - xm) / half) ** 1.5
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * bend / 0.068)) ** 6
    thorax = _ellipse(x, y, xm, 0.45, half * 1.05, 0.37) < 1
    d += _BONE * ribs * thorax * (y < dome + 0.04) * (1 - 0.7 * mediastinum)
    for sign in (-1.0, 1.0):
        clav = _polyline(x, y, [(xm + sign * 0.04, 0.17), (xm + sign * 0.3, 0.11)])
        d += 0.2 * _soft(clav - 0.014, 0.01)
    spine = np.abs(x - xm) < 0.035
    d += np.where(spine, _BONE * (0.5 + 0.4 * (np.cos(2 * np.pi * y / 0.05) > -0.7)), 0.0) * body
    d = np.where((_ellipse(x, y, xm + 0.2, dome + 0.1, 0.06, 0.035) < 1), _LUNG, d)  # gastric bubble
    d = _frontal_findings(case, d, x, y, xm, half, dome, lungs, rng)
    return d


def _frontal_findings(
    case: CxrCase,
    d: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    xm: float,
    half: float,
    dome: float,
    lungs: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    n = d.shape[0]
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lateral = np.clip(sign * (x - xm) / half, 0.0, 1.0)
        ptx = getattr(case, f"{side}_pneumothorax")
        if ptx:
            cx = xm + sign * (0.1 + half * 0.25 * (1 - _PTX_COLLAPSE[ptx]))
            collapsed = _ellipse(
                x, y, cx, 0.55, half * 0.5 * (1 - _PTX_COLLAPSE[ptx]), 0.36 - 0.15 * _PTX_COLLAPSE[ptx]
            )
            air = lungs[side] & (collapsed >= 1)
            d = np.where(air, _AIR, d)
            d += 0.12 * (np.abs(collapsed - 1) < 0.06) * lungs[side]  # visceral pleural line
        eff = getattr(case, f"{side}_effusion")
        if eff:
            level = dome + 0.03 - _EFFUSION_HEIGHT[eff] - 0.08 * lateral
            fluid = _soft(level - y, 0.04) * lungs[side]
            d = d * (1 - fluid) + np.maximum(d, _SOFT) * fluid
    if case.consolidation_lobe:
        side, part = case.consolidation_lobe.split(" ", 1)
        band = {"upper lobe": (0.1, 0.45), "middle lobe": (0.45, 0.62), "lower lobe": (0.5, 0.8)}[part]
        patch = (smooth_noise(rng, n, 10) > 0.35) & (y > band[0]) & (y < band[1]) & lungs[side]
        d += 0.3 * _blur(_blur(patch.astype(float)))
    if case.nodule:
        sign = -1.0 if case.nodule.side == "right" else 1.0
        cy = {"upper": 0.28, "mid": 0.44, "lower": 0.58}[case.nodule.zone] + rng.normal(0, 0.02)
        cx = xm + sign * half * (0.62 + rng.normal(0, 0.05))
        r = 0.012 + case.nodule.size_mm * 0.0017
        d += 0.35 * _soft(np.hypot(x - cx, y - cy) - r, 0.008)
    for device in case.devices:
        d = _draw_device(device, d, x, y, xm, dome)
    return d


def _draw_device(
    device: str, d: np.ndarray, x: np.ndarray, y: np.ndarray, xm: float, dome: float
) -> np.ndarray:
    if device == "pacemaker":
        can = np.maximum(np.abs(x - xm - 0.25) / 0.045, np.abs(y - 0.17) / 0.03)
        d = np.maximum(d, _METAL * _soft(can - 1, 0.15))
        leads = _polyline(
            x, y, [(xm + 0.22, 0.18), (xm + 0.02, 0.3), (xm - 0.02, 0.48), (xm + 0.06, dome - 0.05)]
        )
        return d + 0.45 * _soft(leads - 0.005, 0.006)
    paths = {
        "endotracheal tube": ([(xm, 0.0), (xm, 0.25)], 0.008),
        "nasogastric tube": ([(xm + 0.01, 0.0), (xm + 0.02, 0.5), (xm + 0.15, dome + 0.12)], 0.006),
        "right internal jugular catheter": ([(xm - 0.12, 0.0), (xm - 0.05, 0.2), (xm - 0.04, 0.4)], 0.006),
    }
    points, width = paths[device]
    return d + 0.45 * _soft(_polyline(x, y, points) - width, 0.006)


def _lateral(case: CxrCase, n: int, rng: np.random.Generator) -> np.ndarray:
    y, x = (np.mgrid[0:n, 0:n] / float(n)).astype(np.float32)
    dome = 0.7 + rng.normal(0, 0.01)
    body = _ellipse(x, y, 0.5, 0.6, 0.4, 0.65) < 1
    d = np.where(body, _SOFT, 0.0)
    lung = (_ellipse(x, y, 0.52, 0.46, 0.28, 0.34) < 1) & (y < dome + 0.3 * (x - 0.5) ** 2)
    d = np.where(lung, _LUNG + 0.08 * smooth_noise(rng, n, 20), d)
    heart = _ellipse(x, y, 0.36, dome - 0.09, 0.11 + 0.5 * (case.ctr - NORMAL_CTR), 0.13) < 1
    d = np.where(heart & lung, _HEART, d)
    spine = np.abs(x - 0.8) < 0.05
    d += np.where(spine, _BONE * (0.7 + 0.6 * (np.cos(2 * np.pi * y / 0.055) > -0.6)), 0.0) * body
    d += 0.15 * (np.abs(x - 0.2 - 0.05 * y) < 0.012) * (y > 0.2) * (y < 0.6)  # sternum
    if case.left_effusion or case.right_effusion:
        fluid = lung & (y > dome - 0.08 - 0.15 * np.clip(x - 0.55, 0, 1))
        d = np.where(fluid, np.maximum(d, _SOFT), d)
    if case.consolidation_lobe:
        upper = "upper" in case.consolidation_lobe
        patch = (smooth_noise(rng, n, 8) > 0.4) & lung & ((y < 0.42) if upper else (y > 0.45))
        d += 0.3 * _blur(patch.astype(float))
    if case.nodule:
        cy = {"upper": 0.3, "mid": 0.45, "lower": 0.58}[case.nodule.zone]
        d += 0.35 * _soft(np.hypot(x - 0.55, y - cy) - 0.012 - case.nodule.size_mm * 0.0017, 0.008)
    if "pacemaker" in case.devices:
        d = np.maximum(d, _METAL * (np.maximum(np.abs(x - 0.22) / 0.02, np.abs(y - 0.2) / 0.035) < 1))
    if case.devices:
        d += 0.4 * _soft(_polyline(x, y, [(0.42, 0.0), (0.45, 0.25)]) - 0.006, 0.006)
    return d


def draw_cxr(case: CxrCase, *, view: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Render one view of ``case``: float32 array (rows, cols) in [0, 1], bright = dense.

    ``view`` is a MIMIC ViewPosition (PA, AP, LATERAL, LL); ``cols <= rows`` crops the sides of a square
    drawing (real detectors are often portrait).
    """
    if cols > rows:
        raise ValueError(f"cols={cols} must be <= rows={rows}")
    draw = _lateral if view in ("LATERAL", "LL") else _frontal
    d = _blur(draw(case, rows, rng))
    d += rng.normal(0.0, 0.012, d.shape)
    left = (rows - cols) // 2
    return np.clip(d[:, left : left + cols], 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class FrontalMeasurements:
    """Image-side measurements of a frontal view (patient sides), from a display image bright = dense.

    ``ctr``: cardiothoracic ratio; ``*_base``: mean brightness of the lateral lung base (higher with effusion);
    ``*_apex``: mean brightness of the lateral upper lung (lower with pneumothorax). Brightness values are on the
    image's own 1st-99th percentile scale, [0, 1]. ``ctr`` is only meaningful without effusion (fluid at the
    heart's level widens the measured bright span).
    """

    ctr: float
    right_base: float
    left_base: float
    right_apex: float
    left_apex: float


def measure_frontal(image: np.ndarray) -> FrontalMeasurements:
    """Measure :class:`FrontalMeasurements` on a frontal image of shape (H, W), any size or scale."""
    img = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    h, w = img.shape
    xm = w // 2
    dark = img < 0.45

    def run_to_dark(row: np.ndarray, step: int) -> int:
        col = xm
        while 0 < col < w - 1 and not row[col]:
            col += step
        return col

    heart = max(
        run_to_dark(dark[r], 1) - run_to_dark(dark[r], -1) for r in range(int(0.5 * h), int(0.64 * h))
    )
    thorax = 0
    for r in range(int(0.3 * h), int(0.55 * h)):
        cols = np.flatnonzero(dark[r, int(0.05 * w) : int(0.95 * w)])
        if cols.size:
            thorax = max(thorax, int(cols[-1] - cols[0]))

    def box(y0: float, y1: float, x0: float, x1: float, sign: int) -> float:
        a, b = sorted((xm + sign * int(x0 * h), xm + sign * int(x1 * h)))
        return float(img[int(y0 * h) : int(y1 * h), max(a, 0) : min(b, w)].mean())

    return FrontalMeasurements(
        ctr=heart / max(thorax, 1),
        right_base=box(0.58, 0.68, 0.2, 0.32, -1),
        left_base=box(0.58, 0.68, 0.2, 0.32, 1),
        right_apex=box(0.2, 0.42, 0.22, 0.32, -1),
        left_apex=box(0.2, 0.42, 0.22, 0.32, 1),
    )
