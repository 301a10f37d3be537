"""Write one synthetic hospital's chest X-rays in the MIMIC-CXR (DICOM, v2.0.0) layout, with ground truth.

Layout under ``root``::

    files/p1X/p1XXXXXXX/s5XXXXXXX/<dicom_id>.dcm     one file per view (PA/AP, sometimes LATERAL/LL)
    files/p1X/p1XXXXXXX/s5XXXXXXX.txt                the study's report
    mimic-cxr-2.0.0-split.csv.gz                     dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv.gz                  dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv.gz                  subject_id, study_id + 14 labels (1.0/0.0/-1.0/blank)
    ground_truth.jsonl                               per dicom_id: findings, details, view, scanner, split

Gzip files carry no timestamp or name, so equal inputs give byte-identical archives.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medim.data import findings as F
from medim.data.synth_cxr import CxrCase, draw_cxr, sample_case
from medim.data.synth_dicom import ImageMeta, ScannerConfig, encode_pixels, write_dicom
from medim.data.synth_reports import EXAMINATIONS, write_report

SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
CHEXPERT_COLUMNS = ("subject_id", "study_id", *F.CHEXPERT_COLUMNS)
GROUND_TRUTH = "ground_truth.jsonl"
_VIEW_MEANING = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
}


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """An independent, reproducible generator for (seed, keys): stable across runs and platforms."""
    digest = hashlib.sha256("/".join(map(str, (seed, *keys))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


class IdAllocator:
    """Unique MIMIC-style subject (1XXXXXXX) and study (5XXXXXXX) ids across all synthetic sites."""

    def __init__(self, seed: int) -> None:
        self._rng = rng_for(seed, "ids")
        self._used: set[int] = set()

    def _draw(self, first_digit: int) -> int:
        while True:
            value = first_digit * 10_000_000 + int(self._rng.integers(10_000_000))
            if value not in self._used:
                self._used.add(value)
                return value

    def subject(self) -> int:
        return self._draw(1)

    def study(self) -> int:
        return self._draw(5)


@dataclass(frozen=True)
class CxrPlan:
    """What to write for one site: counts, findings, acquisition mix, scanners (validated by the caller)."""

    studies: int
    prevalence: dict[str, float]
    scanners: Sequence[ScannerConfig]
    ap_fraction: float
    lateral_fraction: float
    max_studies_per_subject: int
    split: str
    validate_fraction: float
    rows: int


@dataclass(frozen=True)
class CxrWritten:
    """Counts of one written MIMIC tree and the realised finding prevalence (per study)."""

    studies: int
    images: int
    subjects: int
    prevalence: dict[str, float]


def _gzip_csv(path: Path, columns: Sequence[str], rows: list[dict[str, object]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.getvalue().encode())


def _label(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def write_mimic_site(
    root: Path, plan: CxrPlan, *, seed: int, site: str, ids: IdAllocator, progress: Callable[[int], None]
) -> CxrWritten:
    """Draw, encode and write ``plan.studies`` studies under ``root``; ``progress(n)`` after each study."""
    split_rows: list[dict[str, object]] = []
    meta_rows: list[dict[str, object]] = []
    label_rows: list[dict[str, object]] = []
    truth: list[str] = []
    counts = dict.fromkeys(F.CXR_FINDINGS, 0)
    subjects = 0
    study_index = 0
    while study_index < plan.studies:
        rng = rng_for(seed, site, "subject", subjects)
        subject = ids.subject()
        subjects += 1
        base_day = int(rng.integers(0, 80 * 365))
        for visit in range(int(rng.integers(1, plan.max_studies_per_subject + 1))):
            if study_index >= plan.studies:
                break
            rng = rng_for(seed, site, "study", study_index)
            case = sample_case(rng, plan.prevalence)
            study = ids.study()
            split = plan.split
            if split == "train" and rng.random() < plan.validate_fraction:
                split = "validate"
            day = np.datetime64("2110-01-01") + np.timedelta64(base_day + 90 * visit, "D")
            date = str(day).replace("-", "")
            seconds = rng.integers(0, 86_400_000)
            hhmmss = f"{seconds // 3_600_000:02d}{seconds // 60_000 % 60:02d}{seconds // 1000 % 60:02d}"
            time = f"{hhmmss}.{seconds % 1000:03d}"
            view = "AP" if rng.random() < plan.ap_fraction else "PA"
            lateral = bool(rng.random() < plan.lateral_fraction)
            scanner = plan.scanners[int(rng.integers(len(plan.scanners)))]
            report = write_report(case, view=view, lateral=lateral, rng=rng)
            study_dir = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
            study_dir.mkdir(parents=True, exist_ok=True)
            study_dir.with_suffix(".txt").write_text(report.text, encoding="utf-8")
            views = [view] + ([str(rng.choice(["LATERAL", "LATERAL", "LL"]))] if lateral else [])
            for number, image_view in enumerate(views, 1):
                dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5, dtype=np.uint64))
                cols = int(round(plan.rows * scanner.aspect))
                image = draw_cxr(case, view=image_view, rows=plan.rows, cols=cols, rng=rng)
                meta = ImageMeta(subject, study, dicom_id, image_view, date, time, number)
                stored = encode_pixels(image, scanner, rng)
                write_dicom(
                    study_dir / f"{dicom_id}.dcm", stored, scanner=scanner, meta=meta, uid_seed=f"{seed}"
                )
                exam = EXAMINATIONS[(view, lateral)]
                ids_row = {"dicom_id": dicom_id, "subject_id": subject, "study_id": study}
                split_rows.append({**ids_row, "split": split})
                meta_rows.append(
                    {
                        **ids_row,
                        "PerformedProcedureStepDescription": exam,
                        "ViewPosition": image_view,
                        "Rows": plan.rows,
                        "Columns": cols,
                        "StudyDate": date,
                        "StudyTime": time,
                        "ProcedureCodeSequence_CodeMeaning": exam,
                        "ViewCodeSequence_CodeMeaning": _VIEW_MEANING[image_view],
                        "PatientOrientationCodeSequence_CodeMeaning": "Recumbent"
                        if view == "AP"
                        else "Erect",
                    }
                )
                truth.append(_truth_line(ids_row, case, image_view, scanner, split))
            labels = {c: _label(report.chexpert.get(c)) for c in F.CHEXPERT_COLUMNS}
            label_rows.append({"subject_id": subject, "study_id": study, **labels})
            for name in case.findings:
                counts[name] += 1
            study_index += 1
            progress(1)
    root.mkdir(parents=True, exist_ok=True)
    _gzip_csv(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_COLUMNS, split_rows)
    _gzip_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta_rows)
    _gzip_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", CHEXPERT_COLUMNS, label_rows)
    (root / GROUND_TRUTH).write_text("".join(truth), encoding="utf-8")
    total = max(plan.studies, 1)
    return CxrWritten(
        studies=plan.studies,
        images=len(split_rows),
        subjects=subjects,
        prevalence={name: round(count / total, 4) for name, count in counts.items()},
    )


def _truth_line(
    ids_row: dict[str, object], case: CxrCase, view: str, scanner: ScannerConfig, split: str
) -> str:
    record = {
        **ids_row,
        "view": view,
        "split": split,
        "findings": sorted(case.findings),
        "details": case.details(),
        "scanner": scanner.name,
        "modality": scanner.modality,
        "photometric": scanner.photometric,
    }
    return json.dumps(record, sort_keys=True) + "\n"
