"""The prepared-data manifest: ``manifest.jsonl`` (one kept image a line) and ``skipped.jsonl``.

Every manifest line has ``id``, ``split`` (train / validate / test), ``image`` (prepared PNG, relative to the
manifest's folder), ``report`` (the training text), ``modality`` (``cxr`` or ``pathology``) and ``source`` (the
original file, relative to the archive root). CXR lines add ``subject_id``, ``study_id``, ``view``,
``findings``, ``impression`` (null when the report has no such section) and, when the archive has a label CSV,
``labels`` (the 14 CheXpert names -> 1.0 / 0.0 / -1.0 / null). Pathology lines add ``wsi_id`` when known.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "validate", "test")
MODALITIES = ("cxr", "pathology")
_CXR_FIELDS = ("subject_id", "study_id", "view", "findings", "impression")


class ManifestError(ValueError):
    """A manifest file is missing or a line of it is malformed; the message names file and line."""


@dataclass(frozen=True)
class ManifestRecord:
    """One prepared image with its training text (see the module docstring for the fields)."""

    id: str
    split: str
    image: str
    report: str
    modality: str
    source: str
    subject_id: str | None = None
    study_id: str | None = None
    view: str | None = None
    findings: str | None = None
    impression: str | None = None
    labels: dict[str, float | None] | None = None
    wsi_id: str | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(
                f"record {self.id}: split={self.split!r} is invalid: allowed {', '.join(SPLITS)}"
            )
        if self.modality not in MODALITIES:
            raise ValueError(
                f"record {self.id}: modality={self.modality!r} is invalid: allowed cxr, pathology"
            )

    def to_json(self) -> dict[str, Any]:
        """The manifest line: optional fields appear when set; CXR lines always carry their CXR fields."""
        data = asdict(self)
        keep = set(_CXR_FIELDS) if self.modality == "cxr" else set()
        return {k: v for k, v in data.items() if v is not None or k in keep}


@dataclass(frozen=True)
class SkipRecord:
    """One input that was not used: its path (relative to the archive root), a reason code and details."""

    path: str
    reason: str
    detail: str = ""


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path | str) -> list[ManifestRecord]:
    """Load ``manifest.jsonl`` (or a folder holding one) into records; raise :class:`ManifestError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run `medim-data prepare` first)")
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(ManifestRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{number}: malformed manifest line ({err})") from None
    return records
