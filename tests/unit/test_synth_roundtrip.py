"""``medim-data synth`` -> ``medim-data prepare`` reads back exactly what synth wrote (its ground truth)."""

import csv
import gzip
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medim.data.cli import main
from medim.data.findings import CHEXPERT_COLUMNS
from medim.data.manifest import read_manifest
from medim.data.pathgen import PathGenOptions, hash_split


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    argv = [
        "synth",
        "--out",
        str(out),
        "--seed",
        "5",
        "--image-size",
        "16",
        "--native-scale",
        "2",
        "--scale",
        "0.1",
    ]
    assert main([*argv, "--no-progress"]) == 0
    return out


def roots(federation: Path, kind: str) -> list[Path]:
    return sorted(p for p in federation.rglob(kind) if p.is_dir() and (p / "ground_truth.jsonl").is_file())


def prepare(root: Path, fmt: str) -> Path:
    out = root.parent / f"prepared-{fmt}"
    assert (
        main(
            [
                "prepare",
                "--format",
                fmt,
                "--root",
                str(root),
                "--out",
                str(out),
                "--image-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def truth(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]


def findings_section(report: str) -> str | None:
    match = re.search(r"\n FINDINGS:\s(.*?)(?=\n [A-Z ()/,-]+:\s|\Z)", "\n" + report, re.S)
    return " ".join(match.group(1).split()) if match else None


def test_every_cxr_site_round_trips(federation):
    sites = roots(federation, "mimic-cxr")
    assert len(sites) >= 3
    with_findings = 0
    for root in sites:
        out = prepare(root, "mimic-cxr")
        expected = {t["dicom_id"]: t for t in truth(root)}
        records = {r.id: r for r in read_manifest(out)}
        frontal = {k for k, t in expected.items() if t["view"] in ("PA", "AP")}
        assert set(records) == frontal, root
        skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
        assert Counter(s["reason"] for s in skipped) == Counter(
            {"view_not_kept": len(expected) - len(frontal)}
        )
        raw = gzip.decompress((root / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()).decode()
        labels = {row["study_id"]: row for row in csv.DictReader(io.StringIO(raw))}
        for dicom_id, record in records.items():
            t = expected[dicom_id]
            assert (record.split, record.view) == (t["split"], t["view"])
            assert (record.subject_id, record.study_id) == (str(t["subject_id"]), str(t["study_id"]))
            row = labels[record.study_id]
            assert record.labels == {n: float(row[n]) if row[n] else None for n in CHEXPERT_COLUMNS}
            study = root / Path(record.source).parent
            text = study.with_suffix(".txt").read_text()
            assert record.findings == findings_section(text)
            assert record.report == (record.findings or record.impression)
            with_findings += record.findings is not None
            pixels = np.asarray(Image.open(out / record.image), dtype=float)
            assert pixels.shape == (16, 16)
            # display orientation whatever the scanner wrote (MONOCHROME1, LUTs, rescale): mediastinum bright
            centre, lung = pixels[5:11, 7:9].mean(), pixels[5:11, 3:5].mean()
            assert centre > lung + 30, (t["scanner"], t["photometric"])
    assert with_findings > 0


def test_every_pathgen_site_round_trips(federation):
    sites = roots(federation, "pathgen")
    assert len(sites) >= 2
    for root in sites:
        out = prepare(root, "pathgen")
        expected = {t["patch_id"]: t for t in truth(root)}
        records = {r.id: r for r in read_manifest(out)}
        assert set(records) == set(expected), root
        assert (out / "skipped.jsonl").read_text() == ""
        captions = {}
        for entry in json.loads((root / "PathGen-1.6M.json").read_text()):
            wsi = entry.get("wsi_id", entry.get("WSI_id"))
            captions[f"{wsi}_{entry['position'][0]}_{entry['position'][1]}"] = " ".join(
                entry["caption"].split()
            )
        has_tables = (root / "pathgen_test_image.csv").is_file()
        for pid, record in records.items():
            t = expected[pid]
            assert record.wsi_id == t["wsi_id"] and record.report == captions[pid]
            assert record.split == (t["split"] if has_tables else hash_split(pid, PathGenOptions()))
            with Image.open(out / record.image) as img:
                assert (img.mode, img.size) == ("RGB", (16, 16))
