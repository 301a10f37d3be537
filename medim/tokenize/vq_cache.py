"""Code caches: every image of a prepared folder encoded once, stored next to its manifest.

``PREPARED_DIR/codes-<fingerprint>.safetensors`` holds ``codes`` int32 [N, image_tokens] (row-major code
grids) with the image ids, tokenizer fingerprint, image_tokens and codebook_size in its metadata. A cache is
re-used as long as it covers exactly the manifest's ids; a new tokenizer (other fingerprint) gets its own file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from medim.tokenize.vq import VQTokenizer
from medim.tokenize.vq_data import load_image, read_manifest, to_unit_range

CACHE_PREFIX = "codes-"


@dataclass
class CodeCache:
    """Codes of a prepared folder: ``codes`` int64 [N, image_tokens] aligned with ``ids``."""

    path: Path
    fingerprint: str
    ids: list[str]
    codes: torch.Tensor
    codebook_size: int

    def __post_init__(self) -> None:
        self._row = {image_id: i for i, image_id in enumerate(self.ids)}

    def get(self, image_id: str) -> torch.Tensor:
        """Codes [image_tokens] of one image."""
        if image_id not in self._row:
            raise KeyError(f"{self.path}: no codes for image id {image_id!r}")
        return self.codes[self._row[image_id]]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """id -> codes [image_tokens]."""
        return {image_id: self.codes[i] for i, image_id in enumerate(self.ids)}


def cache_path(folder: str | Path, fingerprint: str) -> Path:
    """Where the cache of the tokenizer with this :meth:`VQTokenizer.fingerprint` lives in a prepared folder."""
    return Path(folder) / f"{CACHE_PREFIX}{fingerprint}.safetensors"


def load_code_cache(path: str | Path) -> CodeCache:
    """Read a cache file written by :func:`encode_folder`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: code cache not found")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        names = list(handle.keys())
        if "codes" not in names or "ids" not in meta:
            raise ValueError(f"{path}: not a code cache (expects a 'codes' tensor and 'ids' metadata)")
        codes = handle.get_tensor("codes").long()
    ids = json.loads(meta["ids"])
    if len(ids) != codes.shape[0]:
        raise ValueError(f"{path}: {len(ids)} ids but {codes.shape[0]} code rows")
    return CodeCache(
        path=path,
        fingerprint=meta.get("fingerprint", ""),
        ids=ids,
        codes=codes,
        codebook_size=int(meta.get("codebook_size", 0)),
    )


@torch.no_grad()
def encode_folder(
    tokenizer: VQTokenizer, folder: str | Path, *, batch_size: int = 64, progress: bool = False
) -> CodeCache:
    """Codes of every image (all splits) of a prepared folder, from its cache when that is up to date."""
    folder = Path(folder)
    rows = read_manifest(folder)
    fingerprint = tokenizer.fingerprint()
    path = cache_path(folder, fingerprint)
    ids = [row.id for row in rows]
    if path.is_file():
        cached = load_code_cache(path)
        if cached.ids == ids:
            return cached
    tokenizer.eval()
    res = tokenizer.config.resolution
    chunks: list[torch.Tensor] = []
    bar = tqdm(total=len(rows), desc=f"encode {folder.name}", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        pixels = torch.stack([torch.from_numpy(load_image(row.path, res)) for row in batch])
        chunks.append(tokenizer.encode(to_unit_range(pixels)))
        bar.update(len(batch))
    bar.close()
    codes = torch.cat(chunks) if chunks else torch.zeros((0, tokenizer.config.image_tokens), dtype=torch.long)
    metadata = {
        "ids": json.dumps(ids),
        "fingerprint": fingerprint,
        "image_tokens": str(tokenizer.config.image_tokens),
        "codebook_size": str(tokenizer.config.codebook_size),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file({"codes": codes.to(torch.int32).contiguous()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return CodeCache(
        path=path,
        fingerprint=fingerprint,
        ids=ids,
        codes=codes,
        codebook_size=tokenizer.config.codebook_size,
    )
