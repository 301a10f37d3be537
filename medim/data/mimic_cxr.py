"""Index a MIMIC-CXR (DICOM, v2.0.0 layout) or MIMIC-CXR-JPG archive.

Layout under ``root``::

    files/p10/p10000032/s50414267/<dicom_id>.dcm   (.jpg for MIMIC-CXR-JPG)
    files/p10/p10000032/s50414267.txt              the study's report
    mimic-cxr-2.0.0-split.csv[.gz]                 dicom_id, study_id, subject_id, split  (or annotation.json)
    mimic-cxr-2.0.0-metadata.csv[.gz]              dicom_id, ..., ViewPosition             (required)
    mimic-cxr-2.0.0-chexpert.csv[.gz]              subject_id, study_id + 14 labels        (optional)
    mimic-cxr-2.0.0-negbio.csv[.gz]                same columns                            (optional)

The split comes from the split CSV, or from an R2Gen ``annotation.json`` (``{"train"|"val"|"test": [{id,
study_id, subject_id, report, image_path: [...], split}]}``, "val" meaning validate) when no split CSV exists
or one is named explicitly. Every image on disk and every image a split source lists ends up either as a
:class:`~medim.data.archive.Candidate` or as a skip line with a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medim.config import ConfigError
from medim.data.archive import ArchiveError, ArchiveIndex, Candidate, find_table, read_table, relative
from medim.data.findings import CHEXPERT_COLUMNS
from medim.data.manifest import SPLITS, ManifestRecord
from medim.data.reports import TextConfig, clean_text, parse_report, training_text

SPLIT_TABLE = "mimic-cxr-2.0.0-split"
METADATA_TABLE = "mimic-cxr-2.0.0-metadata"
LABELERS = ("chexpert", "negbio")
ANNOTATION_SPLITS = {"train": "train", "val": "validate", "validate": "validate", "test": "test"}
STUDY_DIR = re.compile(r"^p\d{2}/p\d+/s\d+$")


@dataclass
class MimicOptions:
    """How to read a MIMIC archive.

    ``views``: ViewPosition values kept (upper case; empty list keeps every image, blank views included).
    ``labeler``: which label CSV to join (chexpert or negbio). ``annotation``: an R2Gen ``annotation.json``
    to use as the split source instead of the split CSV. ``text``: which report sections form the text.
    """

    views: list[str] = field(default_factory=lambda: ["PA", "AP"])
    labeler: str = "chexpert"
    annotation: Path | None = None
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        for view in self.views:
            if not view or view != view.upper():
                raise ConfigError(
                    f"mimic.views contains {view!r}, which is invalid: allowed upper-case names"
                )
        if self.labeler not in LABELERS:
            raise ConfigError(f"mimic.labeler={self.labeler!r} is invalid: allowed one of chexpert, negbio")


@dataclass(frozen=True)
class SplitEntry:
    """Where one image belongs, as its split source says; ``report`` only from annotation.json."""

    subject_id: str
    study_id: str
    split: str
    expected: str
    report: str | None = None


@dataclass(frozen=True)
class StudyText:
    """A study's parsed report, or the reason it gives no training text."""

    text: str | None
    findings: str | None
    impression: str | None
    reason: str = ""


def _expected(subject: str, study: str, dicom_id: str, ext: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}{ext}"


def _splits_from_csv(path: Path, ext: str, index: ArchiveIndex) -> dict[str, SplitEntry]:
    table = read_table(path)
    table.require("dicom_id", "study_id", "subject_id", "split")
    entries: dict[str, SplitEntry] = {}
    for line, row in enumerate(table.rows, start=2):
        ids = (row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip())
        if not all(ids) or not ids[1].isdigit() or not ids[2].isdigit() or row["split"] not in SPLITS:
            index.skip(f"{path.name}:{line}", "malformed_csv_row", f"row {row!r}")
            continue
        dicom_id, subject, study = ids
        entries[dicom_id] = SplitEntry(subject, study, row["split"], _expected(subject, study, dicom_id, ext))
    return entries


def _splits_from_annotation(path: Path, index: ArchiveIndex) -> dict[str, SplitEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArchiveError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict) or not set(data) & set(ANNOTATION_SPLITS):
        raise ArchiveError(f"{path}: expected an object with train/val/test lists (R2Gen annotation.json)")
    entries: dict[str, SplitEntry] = {}
    for key, items in data.items():
        split = ANNOTATION_SPLITS.get(key)
        if split is None or not isinstance(items, list):
            index.skip(f"{path.name}[{key}]", "malformed_entry", "not a train/val/test list")
            continue
        for i, item in enumerate(items):
            entry = _annotation_entry(item, split)
            if entry is None:
                index.skip(
                    f"{path.name}[{key}][{i}]", "malformed_entry", "needs subject_id, study_id, image_path"
                )
                continue
            for image in item["image_path"]:
                dicom_id = Path(image).stem
                entries[dicom_id] = SplitEntry(
                    entry.subject_id, entry.study_id, split, f"files/{image}", report=entry.report
                )
    return entries


def _annotation_entry(item: Any, split: str) -> SplitEntry | None:
    if not isinstance(item, dict):
        return None
    subject, study = str(item.get("subject_id", "")), str(item.get("study_id", ""))
    images = item.get("image_path")
    if not subject.isdigit() or not study.isdigit() or not isinstance(images, list) or not images:
        return None
    if not all(isinstance(image, str) and image for image in images):
        return None
    report = item.get("report")
    return SplitEntry(subject, study, split, "", report=report if isinstance(report, str) else None)


def _labels(path: Path, index: ArchiveIndex) -> dict[str, dict[str, float | None]]:
    table = read_table(path)
    table.require("study_id", *CHEXPERT_COLUMNS)
    by_study: dict[str, dict[str, float | None]] = {}
    for line, row in enumerate(table.rows, start=2):
        try:
            values = {name: float(row[name]) if row[name].strip() else None for name in CHEXPERT_COLUMNS}
        except ValueError:
            index.skip(
                f"{path.name}:{line}", "malformed_csv_row", "label values must be 1.0, 0.0, -1.0 or blank"
            )
            continue
        if any(v not in (None, 1.0, 0.0, -1.0) for v in values.values()):
            index.skip(
                f"{path.name}:{line}", "malformed_csv_row", "label values must be 1.0, 0.0, -1.0 or blank"
            )
            continue
        by_study[row["study_id"].strip()] = values
    return by_study


def _study_text(report_path: Path, entry: SplitEntry, config: TextConfig) -> StudyText:
    if report_path.is_file():
        try:
            raw = report_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return StudyText(None, None, None, "unreadable_report")
        if not raw.strip():
            return StudyText(None, None, None, "empty_report")
        sections = parse_report(raw)
        text = training_text(sections, config)
        if text is None:
            return StudyText(None, sections.findings, sections.impression, "no_usable_sections")
        return StudyText(text, sections.findings, sections.impression)
    if entry.report is not None:
        text = clean_text(entry.report)
        return StudyText(text or None, text or None, None, "" if text else "empty_report")
    return StudyText(None, None, None, "missing_report")


def _images_on_disk(files: Path, ext: str, index: ArchiveIndex, root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(files.rglob(f"*{ext}")):
        if not STUDY_DIR.match(path.parent.relative_to(files).as_posix()):
            index.skip(relative(path, root), "unexpected_location", "expected files/pXX/pSUBJECT/sSTUDY/")
        elif path.stem in found:
            index.skip(
                relative(path, root),
                "duplicate_image",
                f"same dicom_id as {relative(found[path.stem], root)}",
            )
        else:
            found[path.stem] = path
    return found


def _split_source(root: Path, options: MimicOptions, ext: str, index: ArchiveIndex) -> dict[str, SplitEntry]:
    if options.annotation is not None:
        if not options.annotation.is_file():
            raise ArchiveError(f"{options.annotation}: annotation file not found")
        return _splits_from_annotation(options.annotation, index)
    split_csv = find_table(root, SPLIT_TABLE)
    if split_csv is not None:
        return _splits_from_csv(split_csv, ext, index)
    if (root / "annotation.json").is_file():
        return _splits_from_annotation(root / "annotation.json", index)
    raise ArchiveError(
        f"{root / (SPLIT_TABLE + '.csv')}: split file not found (nor .csv.gz, nor annotation.json)"
    )


def index_mimic(root: Path, *, jpg: bool, options: MimicOptions) -> ArchiveIndex:
    """Join files, split source, metadata, reports and labels of a MIMIC archive into candidates + skips."""
    files = root / "files"
    if not files.is_dir():
        raise ArchiveError(
            f"{files}: not found; --root must hold MIMIC-CXR's files/pXX/pSUBJECT/sSTUDY/ tree"
        )
    metadata_path = find_table(root, METADATA_TABLE)
    if metadata_path is None:
        raise ArchiveError(f"{root / (METADATA_TABLE + '.csv')}: metadata file not found (nor .csv.gz)")
    ext = ".jpg" if jpg else ".dcm"
    index = ArchiveIndex()
    splits = _split_source(root, options, ext, index)
    metadata = read_table(metadata_path)
    metadata.require("dicom_id", "ViewPosition")
    views = {row["dicom_id"].strip(): row["ViewPosition"].strip().upper() for row in metadata.rows}
    label_path = find_table(root, f"mimic-cxr-2.0.0-{options.labeler}")
    labels = _labels(label_path, index) if label_path is not None else None
    on_disk = _images_on_disk(files, ext, index, root)
    studies: dict[Path, StudyText] = {}
    for dicom_id in sorted(set(splits) | set(on_disk)):
        entry, path = splits.get(dicom_id), on_disk.get(dicom_id)
        shown = (
            relative(path, root) if path is not None else entry.expected if entry is not None else dicom_id
        )
        if entry is None:
            index.skip(shown, "not_in_split", f"dicom_id {dicom_id} is not in the split source")
            continue
        view = views.get(dicom_id)
        if view is None:
            index.skip(shown, "no_metadata", f"dicom_id {dicom_id} is not in {metadata_path.name}")
            continue
        if options.views and view not in options.views:
            index.skip(shown, "view_not_kept", f"ViewPosition={view or 'blank'}")
            continue
        if path is None:
            index.skip(shown, "missing_image", "listed in the split source but not on disk")
            continue
        report_path = path.parent.parent / f"{path.parent.name}.txt"
        if report_path not in studies:
            studies[report_path] = _study_text(report_path, entry, options.text)
        study = studies[report_path]
        if study.text is None:
            index.skip(shown, study.reason, f"report {relative(report_path, root)}")
            continue
        record = ManifestRecord(
            id=dicom_id,
            split=entry.split,
            image="",
            report=study.text,
            modality="cxr",
            source=shown,
            subject_id=entry.subject_id,
            study_id=entry.study_id,
            view=view,
            findings=study.findings,
            impression=study.impression,
            labels=None if labels is None else labels.get(entry.study_id, dict.fromkeys(CHEXPERT_COLUMNS)),
        )
        index.candidates.append(Candidate(source=path, decoder="raster" if jpg else "dicom", record=record))
    return index
