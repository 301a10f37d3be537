"""Shared pieces of the archive readers: what a reader hands to ``prepare`` and how it finds its tables."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

from medim.data.manifest import ManifestRecord, SkipRecord

DECODERS = ("dicom", "raster")


class ArchiveError(ValueError):
    """The archive cannot be read at all (wrong root, missing required table); the message names the file."""


@dataclass(frozen=True)
class Candidate:
    """An image the reader wants kept: its file, how to decode it, and its manifest record (``image`` unset)."""

    source: Path
    decoder: str
    record: ManifestRecord

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(
                f"candidate {self.source}: decoder={self.decoder!r} is invalid: allowed dicom, raster"
            )


@dataclass
class ArchiveIndex:
    """A reader's result: images to prepare and inputs already rejected (with reasons)."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[SkipRecord] = field(default_factory=list)

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        self.skipped.append(SkipRecord(path=path, reason=reason, detail=detail))


def find_table(root: Path, stem: str) -> Path | None:
    """``root/stem.csv`` or ``root/stem.csv.gz``, whichever exists (plain first), else None."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    return None


@dataclass(frozen=True)
class Table:
    """A CSV file's header and rows (each row a dict keyed by the header; blanks are "")."""

    path: Path
    columns: tuple[str, ...]
    rows: list[dict[str, str]]

    def require(self, *columns: str) -> None:
        """Raise ArchiveError naming the file when its header lacks any of ``columns``."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ArchiveError(f"{self.path}: missing column(s) {', '.join(missing)}")


def read_table(path: Path) -> Table:
    """Read a CSV file (plain or gzip-compressed); raise ArchiveError naming the file when it cannot."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, csv.Error) as err:
        raise ArchiveError(f"{path}: cannot be read as CSV ({err})") from None
    if reader.fieldnames is None:
        raise ArchiveError(f"{path}: empty CSV (no header line)")
    return Table(path=path, columns=tuple(reader.fieldnames), rows=rows)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with POSIX separators (``path`` as given when outside ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
