"""MIMIC-CXR / MIMIC-CXR-JPG indexing on a hand-made archive (invented ids and report texts)."""

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dicom import write_dicom

from medim.config import ConfigError
from medim.data.archive import ArchiveError
from medim.data.findings import CHEXPERT_COLUMNS
from medim.data.mimic_cxr import MimicOptions, index_mimic
from medim.data.reports import TextConfig


def did(n: int) -> str:
    return f"{n:08x}-0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9"


REPORT_FULL = (
    "                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PA AND LAT)\n"
    " \n"
    " INDICATION:  ___ year old woman with cough.\n"
    " \n"
    " FINDINGS:  The heart is enlarged.  Small right effusion.\n"
    " \n"
    " IMPRESSION:  Cardiomegaly with small effusion.\n"
)
REPORT_COMBINED = " INDICATION:  fever.\n \n FINDINGS AND IMPRESSION:  No acute process.\n"
REPORT_INDICATION_ONLY = " INDICATION:  ___ with pain.\n"

# (dicom_id number, subject, study, view, split, on disk)
IMAGES = [
    (1, "10000001", "50000001", "PA", "train", True),
    (2, "10000001", "50000001", "LATERAL", "train", True),
    (3, "10000002", "50000002", "AP", "validate", True),
    (4, "10000003", "50000003", "PA", "test", True),
    (5, "10000004", "50000004", "PA", "test", True),
    (6, "10000005", "50000005", "PA", "train", False),
    (8, "10000006", "50000006", "PA", "train", True),
]
REPORTS = {
    "50000001": REPORT_FULL,
    "50000002": REPORT_COMBINED,
    "50000003": REPORT_INDICATION_ONLY,
    "50000004": "",
}
NOT_IN_SPLIT = (7, "10000001", "50000001")
LABELS = {"50000001": {"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0", "No Finding": "", "Edema": "0.0"}}


def study_dir(root: Path, subject: str, study: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def write_csv(path: Path, header: list[str], rows: list[list[str]], gz: bool) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    if gz:
        Path(f"{path}.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    else:
        path.write_text(buf.getvalue())


def write_image(path: Path, n: int) -> None:
    """A 6x8 (rows x cols) image whose pixels encode ``n``; DICOM or JPEG by suffix."""
    pixels = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 80 + n) % 4096
    if path.suffix == ".dcm":
        write_dicom(path, pixels)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels // 16).astype(np.uint8)).save(path, quality=95)


def build_mimic(root: Path, *, jpg: bool = False, gz: bool = False, labeler: str | None = "chexpert") -> Path:
    """Write the archive described by IMAGES / REPORTS / LABELS under ``root``."""
    ext = ".jpg" if jpg else ".dcm"
    for n, subject, study, _, _, on_disk in [*IMAGES, (*NOT_IN_SPLIT, "PA", "train", True)]:
        if on_disk:
            write_image(study_dir(root, subject, study) / f"{did(n)}{ext}", n)
    for study, text in REPORTS.items():
        subject = next(s for _, s, st, *_ in IMAGES if st == study)
        study_dir(root, subject, study).with_suffix(".txt").write_text(text)
    split_rows = [[did(n), study, subject, split] for n, subject, study, _, split, _ in IMAGES]
    split_rows.append(["", "50000009", "10000009", "train"])  # malformed: no dicom_id
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz
    )
    meta_rows = [[did(n), subject, study, view] for n, subject, study, view, _, _ in IMAGES]
    meta_rows.append([did(NOT_IN_SPLIT[0]), NOT_IN_SPLIT[1], NOT_IN_SPLIT[2], "PA"])
    write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        meta_rows,
        gz,
    )
    if labeler is not None:
        label_rows = [
            ["10000001", study, *[values.get(name, "") for name in CHEXPERT_COLUMNS]]
            for study, values in LABELS.items()
        ]
        write_csv(
            root / f"mimic-cxr-2.0.0-{labeler}.csv",
            ["subject_id", "study_id", *CHEXPERT_COLUMNS],
            label_rows,
            gz,
        )
    return root


def reasons(index) -> dict[str, str]:
    return {s.path: s.reason for s in index.skipped}


@pytest.mark.parametrize("gz", [False, True])
def test_index_joins_split_metadata_reports_labels(tmp_path, gz):
    root = build_mimic(tmp_path, gz=gz)
    index = index_mimic(root, jpg=False, options=MimicOptions())
    by_id = {c.record.id: c.record for c in index.candidates}
    assert sorted(by_id) == [did(1), did(3)]
    first = by_id[did(1)]
    assert (first.split, first.view, first.subject_id, first.study_id) == (
        "train",
        "PA",
        "10000001",
        "50000001",
    )
    assert first.findings == "The heart is enlarged. Small right effusion."
    assert first.impression == "Cardiomegaly with small effusion."
    assert first.report == first.findings
    assert first.source == f"files/p10/p10000001/s50000001/{did(1)}.dcm"
    assert first.labels is not None
    assert first.labels["Cardiomegaly"] == 1.0 and first.labels["Pleural Effusion"] == -1.0
    assert first.labels["Edema"] == 0.0 and first.labels["No Finding"] is None
    assert set(first.labels) == set(CHEXPERT_COLUMNS)
    third = by_id[did(3)]
    assert (third.split, third.view, third.findings) == ("validate", "AP", None)
    assert third.report == third.impression == "No acute process."
    assert third.labels == dict.fromkeys(CHEXPERT_COLUMNS)  # study absent from the label CSV


def test_every_rejected_input_has_a_reason(tmp_path):
    root = build_mimic(tmp_path)
    index = index_mimic(root, jpg=False, options=MimicOptions())
    assert reasons(index) == {
        f"files/p10/p10000001/s50000001/{did(2)}.dcm": "view_not_kept",
        f"files/p10/p10000003/s50000003/{did(4)}.dcm": "no_usable_sections",
        f"files/p10/p10000004/s50000004/{did(5)}.dcm": "empty_report",
        f"files/p10/p10000005/s50000005/{did(6)}.dcm": "missing_image",
        f"files/p10/p10000001/s50000001/{did(7)}.dcm": "not_in_split",
        f"files/p10/p10000006/s50000006/{did(8)}.dcm": "missing_report",
        "mimic-cxr-2.0.0-split.csv:9": "malformed_csv_row",
    }
    detail = next(s.detail for s in index.skipped if s.reason == "view_not_kept")
    assert detail == "ViewPosition=LATERAL"


def test_views_filter_is_configurable(tmp_path):
    root = build_mimic(tmp_path)
    every = index_mimic(root, jpg=False, options=MimicOptions(views=[]))
    assert sorted(c.record.id for c in every.candidates) == [did(1), did(2), did(3)]
    lateral = index_mimic(root, jpg=False, options=MimicOptions(views=["LATERAL"]))
    assert [c.record.id for c in lateral.candidates] == [did(2)]
    with pytest.raises(ConfigError, match="mimic.views"):
        MimicOptions(views=["pa"])


def test_section_choice_reaches_the_record(tmp_path):
    root = build_mimic(tmp_path)
    opts = MimicOptions(text=TextConfig(sections=["impression", "findings"]))
    first = next(
        c.record for c in index_mimic(root, jpg=False, options=opts).candidates if c.record.id == did(1)
    )
    assert first.report == "Cardiomegaly with small effusion."


def test_jpg_layout_and_negbio_labels(tmp_path):
    root = build_mimic(tmp_path, jpg=True, labeler="negbio")
    index = index_mimic(root, jpg=True, options=MimicOptions(labeler="negbio"))
    assert [c.source.suffix for c in index.candidates] == [".jpg", ".jpg"]
    assert all(c.decoder == "raster" for c in index.candidates)
    assert index.candidates[0].record.labels is not None
    assert index.candidates[0].record.labels["Cardiomegaly"] == 1.0


def test_no_label_csv_means_no_labels(tmp_path):
    root = build_mimic(tmp_path, labeler=None)
    index = index_mimic(root, jpg=False, options=MimicOptions())
    assert all(c.record.labels is None for c in index.candidates)


def test_annotation_json_is_an_alternative_split_source(tmp_path):
    root = build_mimic(tmp_path)
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    annotation = {
        "train": [
            {
                "id": "a1",
                "study_id": 50000001,
                "subject_id": 10000001,
                "report": "ignored when the study has a report file",
                "image_path": [f"p10/p10000001/s50000001/{did(1)}.dcm"],
                "split": "train",
            },
            {
                "id": "a8",
                "study_id": 50000006,
                "subject_id": 10000006,
                "report": "Lungs are clear.  No effusion.",
                "image_path": [f"p10/p10000006/s50000006/{did(8)}.dcm"],
                "split": "train",
            },
            {"id": "broken", "study_id": 1},
        ],
        "val": [
            {
                "id": "a3",
                "study_id": 50000002,
                "subject_id": 10000002,
                "report": "x",
                "image_path": [f"p10/p10000002/s50000002/{did(3)}.dcm"],
                "split": "val",
            }
        ],
        "test": [],
    }
    (root / "annotation.json").write_text(json.dumps(annotation))
    index = index_mimic(root, jpg=False, options=MimicOptions())
    by_id = {c.record.id: c.record for c in index.candidates}
    assert {k: r.split for k, r in by_id.items()} == {did(1): "train", did(3): "validate", did(8): "train"}
    assert by_id[did(1)].report == "The heart is enlarged. Small right effusion."
    assert by_id[did(8)].report == by_id[did(8)].findings == "Lungs are clear. No effusion."
    skipped = reasons(index)
    assert skipped["annotation.json[train][2]"] == "malformed_entry"
    assert skipped[f"files/p10/p10000003/s50000003/{did(4)}.dcm"] == "not_in_split"


def test_missing_required_tables_are_errors_naming_the_file(tmp_path):
    root = build_mimic(tmp_path)
    (root / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(ArchiveError, match=r"mimic-cxr-2\.0\.0-metadata\.csv"):
        index_mimic(root, jpg=False, options=MimicOptions())
    root2 = build_mimic(tmp_path / "two")
    (root2 / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(ArchiveError, match=r"mimic-cxr-2\.0\.0-split\.csv"):
        index_mimic(root2, jpg=False, options=MimicOptions())


def test_wrong_root_is_an_error(tmp_path):
    with pytest.raises(ArchiveError, match="files"):
        index_mimic(tmp_path, jpg=False, options=MimicOptions())


def test_csv_missing_a_column_is_an_error(tmp_path):
    root = build_mimic(tmp_path)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "Rows"], [[did(1), "6"]], gz=False)
    with pytest.raises(ArchiveError, match="ViewPosition"):
        index_mimic(root, jpg=False, options=MimicOptions())
