"""Write one synthetic pathology lab's patches in the PathGen layout, with ground truth.

Layout under ``root``::

    PathGen-1.6M.json            JSON list of {wsi_id | WSI_id, position: ["x", "y"], caption, file_id}
    patches/{wsi_id}_{x}_{y}.png RGB patch, and the same-stem .txt caption
    pathgen_test_image.csv       \\ only for a held-out set (split "test"): MeDiM's split tables,
    pathgen_test_report.csv      /  one ``image_path`` per patch
    ground_truth.jsonl           per patch_id: wsi_id, position, tissue, density, atypia

Slide ids follow the TCGA barcode shape with a ``SYN`` project (``SYN-XX-XXXX-01Z-00-DX1.<UUID>``) so they are
recognisably synthetic; ``file_id`` is a UUID. All derived from the seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medim.data import findings as F
from medim.data.synth_captions import write_caption
from medim.data.synth_mimic import rng_for
from medim.data.synth_pathology import draw_patch, sample_patch_case

CAPTIONS_JSON = "PathGen-1.6M.json"
PATCH_DIR = "patches"
GROUND_TRUTH = "ground_truth.jsonl"
SPLIT_TABLES = ("pathgen_test_image.csv", "pathgen_test_report.csv")


@dataclass(frozen=True)
class PathologyPlan:
    """What to write for one lab (validated by the caller)."""

    patches: int
    tissue_mix: dict[str, float]
    patches_per_slide: int
    wsi_id_key: str
    split: str
    size: int


@dataclass(frozen=True)
class PathologyWritten:
    """Counts of one written PathGen folder and the realised tissue/density/atypia frequencies."""

    patches: int
    slides: int
    prevalence: dict[str, dict[str, float]]


def _uuid(rng: np.random.Generator) -> str:
    h = "".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 4, dtype=np.uint64))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _slide_id(rng: np.random.Generator, site: str) -> str:
    code = "".join(c for c in site.upper() if c.isalnum())[-2:].rjust(2, "X")
    case = "".join(f"{int(v):X}" for v in rng.integers(0, 16, 4))
    return f"SYN-{code}-{case}-01Z-00-DX1.{_uuid(rng).upper()}"


def write_pathgen_site(
    root: Path, plan: PathologyPlan, *, seed: int, site: str, progress: Callable[[int], None]
) -> PathologyWritten:
    """Draw and write ``plan.patches`` patches under ``root``; ``progress(n)`` after each patch."""
    (root / PATCH_DIR).mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, object]] = []
    truth: list[str] = []
    counts: dict[str, dict[str, int]] = {key: {} for key in F.PATHOLOGY_KEYS}
    slides = 0
    while len(entries) < plan.patches:
        slide_rng = rng_for(seed, site, "slide", slides)
        wsi_id, file_id = _slide_id(slide_rng, site), _uuid(slide_rng)
        slides += 1
        positions: set[tuple[int, int]] = set()
        while len(positions) < min(plan.patches_per_slide, plan.patches - len(entries)):
            x, y = (int(v) * 32 for v in slide_rng.integers(0, 4000, 2))
            positions.add((x, y))
        for x, y in sorted(positions):
            rng = rng_for(seed, site, "patch", len(entries))
            case = sample_patch_case(rng, plan.tissue_mix)
            caption = write_caption(case, rng)
            patch_id = f"{wsi_id}_{x}_{y}"
            Image.fromarray(draw_patch(case, size=plan.size, rng=rng)).save(
                root / PATCH_DIR / f"{patch_id}.png", compress_level=1
            )
            (root / PATCH_DIR / f"{patch_id}.txt").write_text(caption + "\n", encoding="utf-8")
            entries.append(
                {
                    plan.wsi_id_key: wsi_id,
                    "position": [str(x), str(y)],
                    "caption": caption,
                    "file_id": file_id,
                }
            )
            record = {
                "patch_id": patch_id,
                "wsi_id": wsi_id,
                "position": [str(x), str(y)],
                "split": plan.split,
            }
            truth.append(json.dumps({**record, **case.as_dict()}, sort_keys=True) + "\n")
            for key, value in case.as_dict().items():
                counts[key][value] = counts[key].get(value, 0) + 1
            progress(1)
    (root / CAPTIONS_JSON).write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    (root / GROUND_TRUTH).write_text("".join(truth), encoding="utf-8")
    if plan.split == "test":
        rows = "".join(f"{PATCH_DIR}/{json.loads(line)['patch_id']}.png\n" for line in truth)
        for table in SPLIT_TABLES:
            (root / table).write_text("image_path\n" + rows, encoding="utf-8")
    total = max(len(entries), 1)
    return PathologyWritten(
        patches=len(entries),
        slides=slides,
        prevalence={k: {v: round(c / total, 4) for v, c in sorted(d.items())} for k, d in counts.items()},
    )
