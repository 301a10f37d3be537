"""Prepared images: pad to square, LANCZOS resize, PNG, stored under a content key so unchanged sources are
never decoded twice.

The cache key hashes the source file's absolute path, modification time (ns) and size together with every
setting that changes the output (size, mode, pad colour, pipeline version). A prepared image lives at
``images/<key[:2]>/<key>.png`` below the output folder; it is written atomically (temporary file + rename), so
an interrupted run never leaves a half-written image that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medim.config import ConfigError

# Bump when decoding or resizing changes, so earlier prepared images are not reused.
PIPELINE_VERSION = 1
MODES = ("L", "RGB")


@dataclass(frozen=True)
class ImageSettings:
    """Everything that determines a prepared image besides its source: size (pixels), PIL mode, pad value."""

    size: int
    mode: str
    pad: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"image_size={self.size} is invalid: allowed > 0")
        if self.mode not in MODES:
            raise ConfigError(f"image mode={self.mode!r} is invalid: allowed one of {', '.join(MODES)}")
        if not 0 <= self.pad <= 255:
            raise ConfigError(f"image pad={self.pad} is invalid: allowed 0..255")


def cache_key(source: Path, settings: ImageSettings) -> str:
    """Hex SHA-256 of the source's path, mtime and size plus ``settings`` and the pipeline version."""
    stat = source.stat()
    payload = {
        "source": str(source.resolve()),
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "settings": asdict(settings),
        "version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_path(key: str) -> str:
    """Where the image with cache key ``key`` lives, relative to the output folder (POSIX separators)."""
    return f"images/{key[:2]}/{key}.png"


def square_resize(image: Image.Image, settings: ImageSettings) -> Image.Image:
    """Convert to ``settings.mode``, pad centred to a square with ``settings.pad``, LANCZOS-resize."""
    image = image.convert(settings.mode)
    side = max(image.size)
    fill: int | tuple[int, int, int] = settings.pad if settings.mode == "L" else (settings.pad,) * 3
    canvas = Image.new(settings.mode, (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != settings.size:
        canvas = canvas.resize((settings.size, settings.size), Image.Resampling.LANCZOS)
    return canvas


def save_atomic(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def array_image(pixels: np.ndarray) -> Image.Image:
    """A PIL image from a uint8 array [H, W] (grayscale) or [H, W, 3] (RGB)."""
    return Image.fromarray(np.ascontiguousarray(pixels))
