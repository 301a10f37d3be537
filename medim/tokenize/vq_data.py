"""Images of prepared data folders (``medim-data prepare``) as tensors for the tokenizer.

A prepared folder holds ``manifest.jsonl``: one JSON object per image with ``id``, ``split``
(train/validate/test), ``image`` (PNG path relative to the folder; CXR 8-bit "L", pathology "RGB"),
``report`` and ``modality`` (cxr/pathology). Images are padded to square (black), LANCZOS-resized to the
tokenizer resolution and kept as uint8 [N,3,R,R] in memory (grayscale repeated to 3 channels); batches are
scaled to [-1, 1] on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medim.data import manifest as data_manifest

HELD_OUT = ("validate", "test")


@dataclass
class ManifestImage:
    """One manifest row; ``path`` is the prepared folder joined with the row's ``image``."""

    id: str
    split: str
    modality: str
    path: Path


def read_manifest(folder: str | Path) -> list[ManifestImage]:
    """Rows of ``folder/manifest.jsonl`` (parsed and validated by :mod:`medim.data.manifest`; a bad line raises
    :class:`~medim.data.manifest.ManifestError` naming the file and line)."""
    root = Path(folder)
    return [
        ManifestImage(id=r.id, split=r.split, modality=r.modality, path=root / r.image)
        for r in data_manifest.read_manifest(root / "manifest.jsonl")
    ]


def load_image(path: Path, resolution: int) -> np.ndarray:
    """PNG -> uint8 [3,R,R]: pad to square (black, centred), LANCZOS resize, gray repeated to RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None
    w, h = rgb.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side))
        square.paste(rgb, ((side - w) // 2, (side - h) // 2))
        rgb = square
    if rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


@dataclass
class ImageSet:
    """Images of one or more prepared folders: ``pixels`` uint8 [N,3,R,R], aligned ``ids`` and ``modalities``."""

    ids: list[str]
    modalities: list[str]
    pixels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` [B] as float32 [B,3,R,R] in [-1, 1]."""
        return to_unit_range(self.pixels[index])

    def select(self, modality: str) -> ImageSet:
        """The subset of one modality."""
        keep = [i for i, m in enumerate(self.modalities) if m == modality]
        return ImageSet(
            ids=[self.ids[i] for i in keep],
            modalities=[modality] * len(keep),
            pixels=self.pixels[torch.tensor(keep, dtype=torch.long)],
        )


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [...] in [0, 255] -> float32 in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def load_images(folders: list[Path], splits: tuple[str, ...], resolution: int) -> ImageSet:
    """All images of ``splits`` in ``folders`` at ``resolution`` (ids made unique as ``<folder>/<id>`` only
    when two folders share an id)."""
    rows: list[tuple[Path, ManifestImage]] = []
    for folder in folders:
        rows.extend((Path(folder), row) for row in read_manifest(folder) if row.split in splits)
    pixels = torch.zeros((len(rows), 3, resolution, resolution), dtype=torch.uint8)
    for i, (_, row) in enumerate(rows):
        pixels[i] = torch.from_numpy(load_image(row.path, resolution))
    ids = [row.id for _, row in rows]
    if len(set(ids)) != len(ids):
        ids = [f"{folder.name}/{row.id}" for folder, row in rows]
    return ImageSet(ids=ids, modalities=[row.modality for _, row in rows], pixels=pixels)
