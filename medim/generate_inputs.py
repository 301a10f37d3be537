"""Inputs of ``medim-generate``: reports (JSONL or command-line text) and image files.

Images are preprocessed exactly like training data (``medim-data prepare`` followed by the tokenizer's image
loader): a DICOM goes through the display pipeline (:func:`medim.data.dicom.decode_dicom`), a PNG/JPG is read
as is; then the image is converted to grayscale (chest X-ray) or RGB (pathology), padded centred to a square
(black for CXR, white for pathology) and LANCZOS-resized to the tokenizer's resolution, and finally repeated to
3 channels and scaled to [-1, 1].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medim.data.dicom import DicomError, decode_dicom
from medim.data.images import ImageSettings, array_image, square_resize
from medim.generate_model import GenerateError
from medim.tokenize.vq import MODALITIES
from medim.tokenize.vq_data import to_unit_range

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class ReportInput:
    """One report to condition on: ``source`` is ``FILE:LINE`` or ``--text``; ``modality`` (optional) says how
    to save the generated image."""

    id: str
    text: str
    source: str
    modality: str | None = None


@dataclass(frozen=True)
class ImageFile:
    """One image file to describe, with the id its outputs are named after."""

    id: str
    path: Path


def check_id(value: object, where: str) -> str:
    """``value`` if it is a usable output file name (letters, digits, '.', '_', '-'); else GenerateError."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        raise GenerateError(f"{where}: id {value!r} is invalid: allowed letters, digits, '.', '_', '-'")
    return value


def check_modality(value: object, where: str) -> str:
    if value not in MODALITIES:
        raise GenerateError(f"{where}: modality={value!r} is invalid: allowed one of {', '.join(MODALITIES)}")
    return str(value)


def read_reports(path: Path, *, default_modality: str | None = None) -> list[ReportInput]:
    """Reports of a JSONL file: one object per line with ``id`` and ``report``, optionally ``modality``
    (else ``default_modality``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise GenerateError(f"--reports {path}: cannot read ({err})") from None
    reports: list[ReportInput] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise GenerateError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or "id" not in obj or "report" not in obj:
            raise GenerateError(f"{where}: expected an object with 'id' and 'report'")
        rid = check_id(obj["id"], where)
        if rid in seen:
            raise GenerateError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        text = obj["report"]
        if not isinstance(text, str) or not text.strip():
            raise GenerateError(f"{where}: empty report for id {rid!r}")
        modality = obj.get("modality", default_modality)
        if modality is not None:
            modality = check_modality(modality, where)
        reports.append(ReportInput(id=rid, text=text.strip(), source=where, modality=modality))
    if not reports:
        raise GenerateError(f"--reports {path}: no reports in the file")
    return reports


def text_reports(texts: list[str], modality: str | None) -> list[ReportInput]:
    """``--text`` values as reports ``text-0000``, ``text-0001``, ..."""
    out = []
    for i, text in enumerate(texts):
        if not text.strip():
            raise GenerateError(f"--text #{i + 1}: empty report")
        out.append(ReportInput(id=f"text-{i:04d}", text=text.strip(), source="--text", modality=modality))
    return out


def _suffix_ok(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES + DICOM_SUFFIXES


def find_images(paths: list[Path]) -> list[ImageFile]:
    """Image files named on the command line: files as given, folders searched recursively for
    .dcm/.dicom/.png/.jpg/.jpeg (sorted). Ids are file stems, made unique with ``-2``, ``-3``, ..."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix_ok(p))
            if not found:
                raise GenerateError(f"--images {path}: the folder holds no DICOM/PNG/JPG files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise GenerateError(f"--images {path}: no such file or folder")
    out: list[ImageFile] = []
    used: set[str] = set()
    for file in files:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", file.stem).lstrip("._-") or "image"
        image_id, n = stem, 1
        while image_id in used:
            n += 1
            image_id = f"{stem}-{n}"
        used.add(image_id)
        out.append(ImageFile(id=image_id, path=file))
    return out


def training_settings(modality: str, size: int) -> ImageSettings:
    """The preparation settings of ``medim-data prepare``: CXR grayscale padded black, pathology RGB padded
    white."""
    pathology = check_modality(modality, "--modality") == "pathology"
    return ImageSettings(size=size, mode="RGB" if pathology else "L", pad=255 if pathology else 0)


def _open(path: Path) -> Image.Image:
    """The source image: the DICOM display image (uint8 grayscale), or the raster file as stored."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        try:
            with Image.open(path) as image:
                image.load()
                return image
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise GenerateError(f"{path}: unreadable image ({err})") from None
    try:
        return array_image(decode_dicom(path).pixels)
    except DicomError as err:
        raise GenerateError(f"{err} (reason: {err.reason})") from None


def infer_modality(image: Image.Image) -> str:
    """``cxr`` for a grayscale image (a grayscale mode, or RGB with equal channels), else ``pathology``."""
    if image.mode in GRAY_MODES:
        return "cxr"
    rgb = np.asarray(image.convert("RGB"))
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return "cxr" if gray else "pathology"


@dataclass
class PreparedImage:
    """An image as the tokenizer sees it: ``pixels`` float32 [3, R, R] in [-1, 1], and its modality."""

    pixels: torch.Tensor
    modality: str


def prepare_image(path: Path, resolution: int, modality: str | None = None) -> PreparedImage:
    """Read and preprocess one image file like training data (see the module docstring)."""
    image = _open(path)
    modality = modality or infer_modality(image)
    try:
        square = square_resize(image, training_settings(modality, resolution))
    except (OSError, ValueError) as err:
        raise GenerateError(f"{path}: cannot convert the image ({err})") from None
    rgb = np.asarray(square.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()
    return PreparedImage(pixels=to_unit_range(torch.from_numpy(rgb)), modality=modality)
