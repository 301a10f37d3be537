"""``medim-data prepare`` end to end on hand-made archives: manifest, skips, PNGs, cache, CLI errors."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEGLSLossless
from test_dicom import write_dicom
from test_mimic_reader import build_mimic, did, study_dir
from test_pathgen_reader import build_json_archive

from medim.data.cli import main
from medim.data.findings import CHEXPERT_COLUMNS
from medim.data.manifest import ManifestError, read_manifest
from medim.data.prepare import prepare_archive


def add_study(root: Path, n: int, subject: str, study: str, *, report: str) -> Path:
    """List one more PA train image (no file written) with its report; return where its DICOM belongs."""
    with (root / "mimic-cxr-2.0.0-split.csv").open("a") as fh:
        fh.write(f"{did(n)},{study},{subject},train\n")
    with (root / "mimic-cxr-2.0.0-metadata.csv").open("a") as fh:
        fh.write(f"{did(n)},{subject},{study},PA\n")
    folder = study_dir(root, subject, study)
    folder.mkdir(parents=True, exist_ok=True)
    folder.with_suffix(".txt").write_text(report)
    return folder / f"{did(n)}.dcm"


def bad_archive(root: Path) -> Path:
    build_mimic(root)
    truncated = write_dicom(
        add_study(root, 20, "10000020", "50000020", report=" FINDINGS:  Clear.\n"),
        np.ones((16, 16), np.uint16),
    )
    truncated.write_bytes(truncated.read_bytes()[:-200])
    garbage = add_study(root, 21, "10000021", "50000021", report=" FINDINGS:  Clear.\n")
    garbage.write_bytes(b"\x00" * 50)
    write_dicom(
        add_study(root, 22, "10000022", "50000022", report=" IMPRESSION:  Clear.\n"),
        np.zeros((2, 2), np.uint16),
        syntax=JPEGLSLossless,
        encoded=b"\xff\xd8\xff\xd9",
    )
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_prepares_mimic_and_reports_every_skip(tmp_path, capsys):
    root, out = bad_archive(tmp_path / "archive"), tmp_path / "out"
    code = main(
        [
            "prepare",
            "--format",
            "mimic-cxr",
            "--root",
            str(root),
            "--out",
            str(out),
            "--image-size",
            "8",
            "--quiet",
        ]
    )
    assert code == 0
    lines = read_jsonl(out / "manifest.jsonl")
    assert [line["id"] for line in lines] == [did(1), did(3)]
    first = lines[0]
    assert set(first) == {
        "id", "split", "image", "report", "modality", "source", "subject_id", "study_id", "view", "findings",
        "impression", "labels",
    }  # fmt: skip
    assert (first["split"], first["modality"], first["view"]) == ("train", "cxr", "PA")
    assert first["report"] == "The heart is enlarged. Small right effusion."
    assert set(first["labels"]) == set(CHEXPERT_COLUMNS) and first["labels"]["Cardiomegaly"] == 1.0
    assert lines[1]["findings"] is None and lines[1]["split"] == "validate"
    skipped = {s["path"]: s["reason"] for s in read_jsonl(out / "skipped.jsonl")}
    assert skipped[f"files/p10/p10000020/s50000020/{did(20)}.dcm"] in {
        "unreadable_dicom",
        "unreadable_pixels",
    }
    assert skipped[f"files/p10/p10000021/s50000021/{did(21)}.dcm"] == "unreadable_dicom"
    assert skipped[f"files/p10/p10000022/s50000022/{did(22)}.dcm"] == "missing_codec"
    assert {"view_not_kept", "missing_image", "missing_report", "empty_report", "no_usable_sections"} <= set(
        skipped.values()
    )
    printed = capsys.readouterr().out
    assert "train" in printed and "validate" in printed and "missing_codec" in printed


def test_cxr_png_is_grayscale_padded_and_scaled(tmp_path):
    result = prepare_archive("mimic-cxr", build_mimic(tmp_path / "a"), tmp_path / "out", image_size=8)
    first = next(r for r in result.records if r.id == did(1))
    with Image.open(result.out / first.image) as img:
        assert (img.mode, img.size) == ("L", (8, 8))
        pixels = np.asarray(img)
    # source 6x8, stored (80 k + 1), k = 0..47: min 1, max 3761; padded with one black row above and below
    assert pixels[0].tolist() == [0] * 8 and pixels[7].tolist() == [0] * 8
    assert pixels[1].tolist() == [round(k * 80 / 3760 * 255) for k in range(8)]
    assert pixels[6, 7] == 255


def test_cache_is_reused_and_keyed_by_source_and_settings(tmp_path):
    root = build_mimic(tmp_path / "a")
    first = prepare_archive("mimic-cxr", root, tmp_path / "out", image_size=8)
    assert (first.decoded, first.cache_hits) == (2, 0)
    again = prepare_archive("mimic-cxr", root, tmp_path / "out", image_size=8)
    assert (again.decoded, again.cache_hits) == (0, 2)
    assert again.records == first.records
    source = root / next(r.source for r in first.records if r.id == did(3))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = prepare_archive("mimic-cxr", root, tmp_path / "out", image_size=8)
    assert (touched.decoded, touched.cache_hits) == (1, 1)
    resized = prepare_archive("mimic-cxr", root, tmp_path / "out", image_size=16)
    assert (resized.decoded, resized.cache_hits) == (2, 0)
    assert read_manifest(tmp_path / "out") == resized.records


def test_jpg_archive(tmp_path):
    result = prepare_archive(
        "mimic-cxr-jpg", build_mimic(tmp_path / "a", jpg=True, gz=True), tmp_path / "out"
    )
    assert [r.id for r in result.records] == [did(1), did(3)]
    with Image.open(result.out / result.records[0].image) as img:
        assert (img.mode, img.size) == ("L", (64, 64))


def test_pathgen_png_is_rgb_padded_white(tmp_path):
    root = build_json_archive(tmp_path / "pg")
    result = prepare_archive("pathgen", root, root / "prepared", image_size=12)
    assert len(result.records) == 2 and all(r.modality == "pathology" for r in result.records)
    with Image.open(result.out / result.records[0].image) as img:
        assert (img.mode, img.size) == ("RGB", (12, 12))
        assert img.getpixel((0, 0)) == (255, 255, 255)  # 12x8 patch padded by 2 white rows
        assert img.getpixel((6, 6)) == (200, 120, 180)
    rerun = prepare_archive("pathgen", root, root / "prepared", image_size=12)  # output PNGs are not inputs
    assert rerun.skipped_by_reason == result.skipped_by_reason and rerun.cache_hits == 2
    lines = read_jsonl(result.manifest)
    assert set(lines[0]) == {"id", "split", "image", "report", "modality", "source", "wsi_id"}


def test_unreadable_patch_is_skipped(tmp_path):
    root = build_json_archive(tmp_path / "pg")
    (root / "patches" / "TCGA-AA-0002_0_672.png").write_bytes(b"not a png")
    result = prepare_archive("pathgen", root, tmp_path / "out")
    assert [r.id for r in result.records] == ["TCGA-AA-0001_100_200"]
    assert result.skipped_by_reason["unreadable_image"] == 1


def test_missing_csv_and_wrong_root_exit_nonzero(tmp_path, capsys):
    root = build_mimic(tmp_path / "a")
    (root / "mimic-cxr-2.0.0-metadata.csv").unlink()
    code = main(["prepare", "--format", "mimic-cxr", "--root", str(root), "--out", str(tmp_path / "o")])
    assert code == 2 and "mimic-cxr-2.0.0-metadata.csv" in capsys.readouterr().err
    code = main(
        ["prepare", "--format", "pathgen", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "nope" in capsys.readouterr().err
    code = main(
        [
            "prepare",
            "--format",
            "mimic-cxr",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--sections",
            "indication",
        ]
    )
    assert code == 2 and "report.sections contains 'indication'" in capsys.readouterr().err


def test_read_manifest_names_a_bad_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:1"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none")
