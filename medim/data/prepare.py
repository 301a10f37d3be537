"""``medim-data prepare``: turn a site's archive into prepared PNGs + ``manifest.jsonl`` + ``skipped.jsonl``.

Readers (:mod:`medim.data.mimic_cxr`, :mod:`medim.data.pathgen`) decide which inputs are usable; this module
decodes each usable image once (DICOM display pipeline or plain raster), pads it to a square, resizes it with
LANCZOS and stores it under a cache key of source + settings (:mod:`medim.data.images`). A re-run on an
unchanged archive decodes nothing. Bad inputs never stop a run: each becomes a ``skipped.jsonl`` line.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from medim.config import ConfigError
from medim.data.archive import ArchiveError, ArchiveIndex, Candidate
from medim.data.dicom import DicomError, decode_dicom
from medim.data.images import ImageSettings, array_image, cache_key, cached_path, save_atomic, square_resize
from medim.data.manifest import SPLITS, ManifestRecord, SkipRecord, write_jsonl
from medim.data.mimic_cxr import MimicOptions, index_mimic
from medim.data.pathgen import PathGenOptions, index_pathgen
from medim.data.reports import TextConfig

FORMATS = ("mimic-cxr", "mimic-cxr-jpg", "pathgen")


@dataclass(frozen=True)
class PrepareResult:
    """What a prepare run wrote: paths, kept counts per split, skips per reason, decode/cache counts."""

    out: Path
    manifest: Path
    skipped: Path
    records: list[ManifestRecord]
    skips: list[SkipRecord]
    decoded: int
    cache_hits: int

    @property
    def by_split(self) -> dict[str, int]:
        counts = Counter(r.split for r in self.records)
        return {split: counts.get(split, 0) for split in SPLITS}

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skips).items()))


@dataclass(frozen=True)
class Prepared:
    """One candidate's outcome: the record with its image path, or the skip, and whether it was decoded."""

    record: ManifestRecord | None
    skip: SkipRecord | None
    decoded: bool


def _decode(candidate: Candidate, settings: ImageSettings) -> Image.Image:
    if candidate.decoder == "dicom":
        return square_resize(array_image(decode_dicom(candidate.source).pixels), settings)
    with Image.open(candidate.source) as image:
        image.load()
        return square_resize(image, settings)


def prepare_one(candidate: Candidate, out: Path, settings: ImageSettings) -> Prepared:
    """Prepare ``candidate``'s image under ``out`` (re-using a cached one) and return its outcome."""
    try:
        rel = cached_path(cache_key(candidate.source, settings))
    except OSError as err:
        skip = SkipRecord(candidate.record.source, "unreadable_image", f"{candidate.source}: {err}")
        return Prepared(record=None, skip=skip, decoded=False)
    record = replace(candidate.record, image=rel)
    if (out / rel).is_file():
        return Prepared(record=record, skip=None, decoded=False)
    try:
        image = _decode(candidate, settings)
    except DicomError as err:
        return Prepared(
            record=None, skip=SkipRecord(candidate.record.source, err.reason, str(err)), decoded=False
        )
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        skip = SkipRecord(candidate.record.source, "unreadable_image", f"{candidate.source}: {err}")
        return Prepared(record=None, skip=skip, decoded=False)
    save_atomic(image, out / rel)
    return Prepared(record=record, skip=None, decoded=True)


def _index(fmt: str, root: Path, out: Path, mimic: MimicOptions, pathgen: PathGenOptions) -> ArchiveIndex:
    if fmt == "pathgen":
        return index_pathgen(root, options=pathgen, exclude=out)
    return index_mimic(root, jpg=fmt == "mimic-cxr-jpg", options=mimic)


def prepare_archive(
    fmt: str,
    root: Path | str,
    out: Path | str,
    *,
    image_size: int = 64,
    mimic: MimicOptions | None = None,
    pathgen: PathGenOptions | None = None,
    progress: bool = False,
) -> PrepareResult:
    """Index the archive at ``root`` (format ``fmt``), prepare its images into ``out``, write the manifests.

    CXR images become 8-bit grayscale PNGs padded with black; pathology patches RGB PNGs padded with white;
    both ``image_size`` x ``image_size``. Raises :class:`ArchiveError` when the archive cannot be read at all.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is invalid: allowed one of {', '.join(FORMATS)}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ArchiveError(f"{root}: --root is not an existing folder")
    pathology = fmt == "pathgen"
    settings = ImageSettings(size=image_size, mode="RGB" if pathology else "L", pad=255 if pathology else 0)
    index = _index(fmt, root, out, mimic or MimicOptions(), pathgen or PathGenOptions())
    records: list[ManifestRecord] = []
    skips = list(index.skipped)
    decoded = hits = 0
    for candidate in tqdm(
        index.candidates, desc="prepare", unit="img", disable=not progress, file=sys.stderr
    ):
        outcome = prepare_one(candidate, out, settings)
        if outcome.record is not None:
            records.append(outcome.record)
            decoded += outcome.decoded
            hits += not outcome.decoded
        if outcome.skip is not None:
            skips.append(outcome.skip)
    write_jsonl(out / "manifest.jsonl", (r.to_json() for r in records))
    write_jsonl(out / "skipped.jsonl", (vars(s) for s in skips))
    return PrepareResult(
        out=out,
        manifest=out / "manifest.jsonl",
        skipped=out / "skipped.jsonl",
        records=records,
        skips=skips,
        decoded=decoded,
        cache_hits=hits,
    )


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``prepare`` subcommand's options on ``parser``."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="archive layout")
    parser.add_argument("--root", required=True, type=Path, help="archive root folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (manifest, skipped, images)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square prepared images")
    parser.add_argument(
        "--views", default="PA,AP", help="MIMIC: comma-separated ViewPosition values to keep, or 'all'"
    )
    parser.add_argument(
        "--sections",
        default="findings,impression",
        help="MIMIC: sections forming the text, in preference order",
    )
    parser.add_argument(
        "--combine", default="first", choices=("first", "all"), help="MIMIC: first section or all"
    )
    parser.add_argument("--no-last-paragraph", action="store_true", help="MIMIC: no last-paragraph fallback")
    parser.add_argument("--labeler", default="chexpert", help="MIMIC: label CSV to join (chexpert or negbio)")
    parser.add_argument("--annotation", type=Path, help="MIMIC: R2Gen annotation.json as the split source")
    parser.add_argument(
        "--captions", type=Path, help="PathGen: captions JSON (default: the *.json in --root)"
    )
    parser.add_argument("--split-by", default="id", help="PathGen hash split key: id or wsi")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``prepare`` from parsed arguments; print counts; return the exit code (2 on a fatal error)."""
    try:
        text = TextConfig(
            sections=_words(args.sections),
            combine=args.combine,
            last_paragraph_fallback=not args.no_last_paragraph,
        )
        views = [] if args.views.strip().lower() == "all" else [v.upper() for v in _words(args.views)]
        mimic = MimicOptions(views=views, labeler=args.labeler, annotation=args.annotation, text=text)
        pathgen = PathGenOptions(captions=args.captions, split_by=args.split_by)
        result = prepare_archive(
            args.format,
            args.root,
            args.out,
            image_size=args.image_size,
            mimic=mimic,
            pathgen=pathgen,
            progress=not args.quiet,
        )
    except (ArchiveError, ConfigError) as err:
        print(f"medim-data prepare: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.manifest} ({len(result.records)} images; {result.decoded} decoded, "
        f"{result.cache_hits} from cache)"
    )
    for split, count in result.by_split.items():
        print(f"  {split:<10} {count}")
    print(f"skipped {len(result.skips)} (details in {result.skipped})")
    for reason, count in result.skipped_by_reason.items():
        print(f"  {reason:<24} {count}")
    return 0
