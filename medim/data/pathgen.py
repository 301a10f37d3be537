"""Index a PathGen-style pathology archive (patch PNGs + captions).

Two layouts are accepted under ``root``:

* **JSON + patches**: one JSON list (``--captions``, or the only ``*.json`` directly under ``root``) of
  ``{"wsi_id" | "WSI_id": str, "position": ["x", "y"], "caption": str, "file_id"?: str}`` and patch images
  ``{wsi_id}_{x}_{y}.png`` anywhere below ``root``. A patch not named by the JSON is skipped
  (``not_in_captions``).
* **Flat PNG + TXT**: ``*.png`` files each with a same-stem ``*.txt`` caption (when no JSON is present).

Split: MeDiM's CSVs (``pathgen_train.csv`` -> train; ``pathgen_test_image.csv`` and
``pathgen_test_report.csv`` -> test; plain or .gz) when any exists. Each row names a patch in its first column
among :data:`ID_COLUMNS` (or the first column): a path or file name whose stem is the patch id. Otherwise the
split is deterministic: SHA-256 of the patch id (or of the slide id, ``split_by="wsi"``) mapped to [0, 1).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medim.config import ConfigError
from medim.data.archive import ArchiveError, ArchiveIndex, Candidate, find_table, read_table, relative
from medim.data.manifest import ManifestRecord
from medim.data.reports import clean_text

SPLIT_TABLES = {"pathgen_train": "train", "pathgen_test_image": "test", "pathgen_test_report": "test"}
ID_COLUMNS = ("id", "image", "image_path", "img_path", "file_name", "filename", "path", "image_name")
PATCH_NAME = re.compile(r"^(?P<wsi>.+)_(?P<x>\d+)_(?P<y>\d+)$")
SPLIT_BY = ("id", "wsi")


@dataclass
class PathGenOptions:
    """How to read a PathGen archive: caption JSON (None = auto), hash-split fractions and key."""

    captions: Path | None = None
    validate_fraction: float = 0.05
    test_fraction: float = 0.05
    split_by: str = "id"

    def __post_init__(self) -> None:
        for name in ("validate_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"pathgen.{name}={value!r} is invalid: allowed [0, 1)")
        if self.validate_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"pathgen.validate_fraction + pathgen.test_fraction = "
                f"{self.validate_fraction + self.test_fraction} is invalid: allowed < 1 (train must be non-empty)"
            )
        if self.split_by not in SPLIT_BY:
            raise ConfigError(f"pathgen.split_by={self.split_by!r} is invalid: allowed one of id, wsi")


@dataclass(frozen=True)
class Patch:
    """A captioned patch before the split is decided."""

    id: str
    wsi_id: str | None
    caption: str
    source: Path


def hash_split(key: str, options: PathGenOptions) -> str:
    """Deterministic split of ``key``: SHA-256 -> u in [0, 1); test below test_fraction, then validate."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    if u < options.test_fraction:
        return "test"
    if u < options.test_fraction + options.validate_fraction:
        return "validate"
    return "train"


def _split_tables(root: Path) -> dict[str, str] | None:
    found = {stem: path for stem in SPLIT_TABLES if (path := find_table(root, stem)) is not None}
    if not found:
        return None
    by_id: dict[str, str] = {}
    for stem, path in found.items():
        table = read_table(path)
        column = next(
            (c for c in ID_COLUMNS if c in table.columns), table.columns[0] if table.columns else None
        )
        if column is None:
            raise ArchiveError(f"{path}: no columns")
        for row in table.rows:
            value = row[column].strip()
            if value:
                pid = Path(value.replace("\\", "/")).name.removesuffix(".png")
                if by_id.get(pid) != "test":
                    by_id[pid] = SPLIT_TABLES[stem]
    return by_id


def _caption_json(root: Path, options: PathGenOptions) -> Path | None:
    if options.captions is not None:
        if not options.captions.is_file():
            raise ArchiveError(f"{options.captions}: captions JSON not found")
        return options.captions
    candidates = sorted(root.glob("*.json"))
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ArchiveError(f"{root}: several JSON files ({names}); name the captions file with --captions")
    return candidates[0] if candidates else None


def _position(value: Any) -> tuple[str, str] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    coords = [str(v).strip() for v in value]
    if not all(c.isascii() and c.isdigit() and len(c) <= 12 for c in coords):
        return None
    return str(int(coords[0])), str(int(coords[1]))


def _patches_from_json(path: Path, pngs: dict[str, Path], root: Path, index: ArchiveIndex) -> list[Patch]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArchiveError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(entries, list):
        raise ArchiveError(f"{path}: expected a JSON list of {{wsi_id, position, caption}} objects")
    patches: dict[str, Patch] = {}
    for i, entry in enumerate(entries):
        where = f"{path.name}[{i}]"
        wsi = entry.get("wsi_id", entry.get("WSI_id")) if isinstance(entry, dict) else None
        position = _position(entry.get("position")) if isinstance(entry, dict) else None
        caption = entry.get("caption") if isinstance(entry, dict) else None
        if not isinstance(wsi, str) or not wsi or position is None or not isinstance(caption, str):
            index.skip(where, "malformed_entry", "needs wsi_id (or WSI_id), position [x, y] and caption")
            continue
        pid = f"{wsi}_{position[0]}_{position[1]}"
        if pid in patches:
            index.skip(where, "duplicate_entry", f"patch {pid} already listed")
        elif not clean_text(caption):
            index.skip(where, "empty_report", f"patch {pid} has an empty caption")
        elif pid not in pngs:
            index.skip(where, "missing_image", f"{pid}.png not found under the root")
        else:
            patches[pid] = Patch(id=pid, wsi_id=wsi, caption=clean_text(caption), source=pngs[pid])
    for pid, png in pngs.items():
        if pid not in patches:
            index.skip(relative(png, root), "not_in_captions", f"{path.name} has no usable entry for {pid}")
    return list(patches.values())


def _patches_from_txt(pngs: dict[str, Path], root: Path, index: ArchiveIndex) -> list[Patch]:
    patches = []
    for pid, png in pngs.items():
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            index.skip(relative(png, root), "missing_caption", f"no {txt.name} next to the image")
            continue
        caption = clean_text(txt.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            index.skip(relative(png, root), "empty_report", f"{txt.name} is empty")
            continue
        match = PATCH_NAME.match(pid)
        patches.append(Patch(id=pid, wsi_id=match["wsi"] if match else None, caption=caption, source=png))
    return patches


def _pngs(root: Path, index: ArchiveIndex, exclude: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for png in sorted(root.rglob("*.png")):
        if exclude is not None and png.resolve().is_relative_to(exclude.resolve()):
            continue
        if png.stem in found:
            index.skip(
                relative(png, root), "duplicate_image", f"same name as {relative(found[png.stem], root)}"
            )
        else:
            found[png.stem] = png
    return found


def index_pathgen(root: Path, *, options: PathGenOptions, exclude: Path | None = None) -> ArchiveIndex:
    """Pair patches with captions, decide splits, and return candidates + skips.

    ``exclude``: a folder below ``root`` whose PNGs are not inputs (the prepare output folder).
    """
    if not root.is_dir():
        raise ArchiveError(f"{root}: not a folder; --root must hold PathGen patches and captions")
    index = ArchiveIndex()
    captions = _caption_json(root, options)
    pngs = _pngs(root, index, exclude)
    if captions is None and not pngs:
        raise ArchiveError(f"{root}: no captions JSON and no *.png patches found")
    if captions is not None:
        patches = _patches_from_json(captions, pngs, root, index)
    else:
        patches = _patches_from_txt(pngs, root, index)
    tables = _split_tables(root)
    for patch in sorted(patches, key=lambda p: p.id):
        if tables is not None:
            split = tables.get(patch.id)
            if split is None:
                index.skip(
                    relative(patch.source, root), "not_in_split", "not listed in the pathgen_*.csv files"
                )
                continue
        else:
            split = hash_split(patch.wsi_id or patch.id if options.split_by == "wsi" else patch.id, options)
        record = ManifestRecord(
            id=patch.id,
            split=split,
            image="",
            report=patch.caption,
            modality="pathology",
            source=relative(patch.source, root),
            wsi_id=patch.wsi_id,
        )
        index.candidates.append(Candidate(source=patch.source, decoder="raster", record=record))
    return index
