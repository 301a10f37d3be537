"""Synthetic hospitals: layout, determinism, DICOM validity, visible findings, reports, configs, CLI."""

import argparse
import csv
import gzip
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medim.config import ConfigError
from medim.data import findings as F
from medim.data import synthetic
from medim.data.synth_cxr import CxrCase, draw_cxr, measure_frontal
from medim.data.synth_dicom import (
    CR_SOP_CLASS,
    DX_SOP_CLASS,
    ImageMeta,
    ScannerConfig,
    encode_pixels,
    write_dicom,
)
from medim.data.synth_mimic import CHEXPERT_COLUMNS, METADATA_COLUMNS, SPLIT_COLUMNS
from medim.data.synth_pathology import PatchCase, draw_patch

SMALL = {"seed": 3, "image_size": 32, "native_scale": 4, "scale": 0.15}
DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
STUDY_DIR = re.compile(r"^files/p1\d/p1\d{7}/s5\d{7}$")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    synthetic.generate(synthetic.SynthConfig(**SMALL), root, show_progress=False)
    return root


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _truth(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _display(path: Path) -> np.ndarray:
    """Decode like a reader: modality LUT, VOI LUT, invert MONOCHROME1; float (rows, cols), bright = dense."""
    ds = pydicom.dcmread(path)
    modality = np.rint(apply_modality_lut(ds.pixel_array, ds)).astype(np.int32)  # integral rescale here
    img = apply_voi_lut(modality, ds).astype(np.float64)
    return img.max() - img if ds.PhotometricInterpretation == "MONOCHROME1" else img


def _cxr_roots(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("mimic-cxr-2.0.0-split.csv.gz"))


def test_layout_and_tables(out):
    names = {s.name for s in synthetic.default_sites()}
    assert {p.name for p in (out / "sites").iterdir()} == names
    assert not (out / "sites" / "pathlab-c" / "mimic-cxr").exists()
    assert not (out / "sites" / "hospital-a" / "pathgen").exists()
    for group in ("heldout", "public"):
        assert (out / group / "mimic-cxr").is_dir() and (out / group / "pathgen").is_dir()
    views = set()
    for root in _cxr_roots(out):
        cols, split = _csv(root / "mimic-cxr-2.0.0-split.csv.gz")
        assert tuple(cols) == SPLIT_COLUMNS
        cols, meta = _csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
        assert tuple(cols) == METADATA_COLUMNS
        cols, labels = _csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
        assert tuple(cols) == CHEXPERT_COLUMNS and len(cols) == 16
        assert {row[c] for row in labels for c in F.CHEXPERT_COLUMNS} <= {"1.0", "0.0", "-1.0", ""}
        expected_splits = {"test"} if root.parent.name == "heldout" else {"train", "validate"}
        assert {row["split"] for row in split} <= expected_splits
        truth = {r["dicom_id"]: r for r in _truth(root / "ground_truth.jsonl")}
        assert set(truth) == {row["dicom_id"] for row in split} == {row["dicom_id"] for row in meta}
        for row in meta:
            views.add(row["ViewPosition"])
            assert DICOM_ID.match(row["dicom_id"])
            study_dir = f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}"
            assert STUDY_DIR.match(study_dir)
            assert (root / study_dir / f"{row['dicom_id']}.dcm").is_file()
            assert (root / f"{study_dir}.txt").is_file()
            assert truth[row["dicom_id"]]["view"] == row["ViewPosition"]
    assert {"PA", "AP"} <= views and views & {"LATERAL", "LL"}
    sites = json.loads((out / "sites.json").read_text())["sites"]
    assert set(sites) == names | {"heldout", "public"}
    assert sites["pathlab-c"]["modalities"] == ["pathgen"]
    assert sites["hospital-d"]["modalities"] == ["mimic-cxr", "pathgen"]


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(out, tmp_path):
    again = tmp_path / "b"
    synthetic.generate(synthetic.SynthConfig(**SMALL), again, show_progress=False)
    assert _digests(again) == _digests(out)
    other = tmp_path / "c"
    synthetic.generate(
        synthetic.SynthConfig(**{**SMALL, "seed": 4, "scale": 0.05}), other, show_progress=False
    )
    first = sorted((other / "sites" / "hospital-a" / "mimic-cxr").rglob("*.dcm"))[0]
    assert first.relative_to(other).as_posix() not in _digests(out)


def test_dicom_tags_are_valid_for_every_scanner(out):
    seen = set()
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        key = (ds.Modality, ds.PhotometricInterpretation, "VOILUTSequence" in ds)
        if key in seen:
            continue
        seen.add(key)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == {"DX": DX_SOP_CLASS, "CR": CR_SOP_CLASS}[ds.Modality]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.SamplesPerPixel == 1 and ds.pixel_array.max() <= 4095
        assert "RescaleSlope" in ds and "RescaleIntercept" in ds
        assert "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
        assert ds.PatientID == path.parent.parent.name[1:] and ds.StudyID == path.parent.name[1:]
        assert ds.SOPInstanceUID.startswith("2.25.")
    assert {m for m, _, _ in seen} == {"DX", "CR"}
    assert {p for _, p, _ in seen} == {"MONOCHROME1", "MONOCHROME2"}
    assert any(lut for _, _, lut in seen)


SCANNERS = list(synthetic.default_scanners().values())


def _roundtrip(tmp_path: Path, case: CxrCase, scanner: ScannerConfig) -> np.ndarray:
    """Draw at 256 rows, write DICOM, decode, downsample to 64 rows; (64, cols/4)."""
    rng = np.random.default_rng(0)
    image = draw_cxr(case, view="PA", rows=256, cols=round(256 * scanner.aspect), rng=rng)
    path = tmp_path / f"{scanner.name}.dcm"
    meta = ImageMeta(
        10000001, 50000001, "00000000-00000000-00000000-00000000-00000001", "PA", "21100101", "080000.000", 1
    )
    write_dicom(path, encode_pixels(image, scanner, rng), scanner=scanner, meta=meta, uid_seed="t")
    img = _display(path)
    h, w = img.shape[0] // 4, img.shape[1] // 4
    return img[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3))


@pytest.mark.parametrize("scanner", SCANNERS, ids=[s.name for s in SCANNERS])
def test_decoded_findings_are_measurable_at_64(tmp_path, scanner):
    normal = measure_frontal(_roundtrip(tmp_path, CxrCase(), scanner))
    big_heart = measure_frontal(_roundtrip(tmp_path, CxrCase(cardiomegaly="moderate"), scanner))
    assert big_heart.ctr > normal.ctr + 0.08
    left_fluid = measure_frontal(_roundtrip(tmp_path, CxrCase(left_effusion="moderate"), scanner))
    assert left_fluid.left_base > left_fluid.right_base + 0.2
    right_air = measure_frontal(_roundtrip(tmp_path, CxrCase(right_pneumothorax="moderate"), scanner))
    assert right_air.right_apex < right_air.left_apex - 0.05
    device = _roundtrip(tmp_path, CxrCase(devices=("pacemaker",)), scanner)
    assert device.max() >= np.percentile(_roundtrip(tmp_path, CxrCase(), scanner), 99.9)


def test_generated_frontals_show_their_ground_truth(out):
    ctr = {True: [], False: []}
    asym = []
    for root in _cxr_roots(out):
        for rec in _truth(root / "ground_truth.jsonl"):
            if rec["view"] not in ("PA", "AP"):
                continue
            path = next(root.rglob(f"{rec['dicom_id']}.dcm"))
            m = measure_frontal(_display(path))
            found = set(rec["findings"])
            if not found & {F.LEFT_PLEURAL_EFFUSION, F.RIGHT_PLEURAL_EFFUSION}:
                ctr[F.CARDIOMEGALY in found].append(m.ctr)
            side = found & {F.LEFT_PLEURAL_EFFUSION, F.RIGHT_PLEURAL_EFFUSION}
            if len(side) == 1:
                sign = 1 if side == {F.LEFT_PLEURAL_EFFUSION} else -1
                asym.append(sign * (m.left_base - m.right_base))
    assert len(ctr[True]) >= 3 and len(ctr[False]) >= 3 and len(asym) >= 3
    assert min(ctr[True]) > np.median(ctr[False])
    assert np.mean(asym) > 0.15 and np.mean(np.array(asym) > 0) > 0.8


def test_reports_are_mimic_style_and_state_the_ground_truth(out):
    headers = ["FINAL REPORT", " EXAMINATION:", " INDICATION:", " COMPARISON:", " FINDINGS:", " IMPRESSION:"]
    blanks = 0
    for root in _cxr_roots(out):
        for rec in _truth(root / "ground_truth.jsonl"):
            study = f"files/p{str(rec['subject_id'])[:2]}/p{rec['subject_id']}/s{rec['study_id']}.txt"
            text = (root / study).read_text()
            assert max(len(line) for line in text.splitlines()) <= 79
            positions = [text.find(h) for h in headers]
            assert -1 not in positions and positions == sorted(positions), text
            blanks += "___" in text
            assert F.extract_cxr_findings(text) == set(rec["findings"]), text
    assert blanks > 0


def test_pathgen_folders_and_captions(out):
    for root in sorted(out.rglob("PathGen-1.6M.json")):
        folder = root.parent
        entries = json.loads(root.read_text())
        key = "WSI_id" if folder.parent.name == "pathlab-c" else "wsi_id"
        truth = {r["patch_id"]: r for r in _truth(folder / "ground_truth.jsonl")}
        assert len(entries) == len(truth) > 0
        for entry in entries:
            assert set(entry) == {key, "position", "caption", "file_id"}
            x, y = entry["position"]
            assert isinstance(x, str) and isinstance(y, str)
            pid = f"{entry[key]}_{x}_{y}"
            png = folder / "patches" / f"{pid}.png"
            assert png.with_suffix(".txt").read_text().strip() == entry["caption"]
            assert 31 <= len(entry["caption"].split()) <= 74
            gt = {k: truth[pid][k] for k in F.PATHOLOGY_KEYS}
            assert F.extract_pathology_findings(entry["caption"]) == gt
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == (128, 128)
    assert (out / "heldout" / "pathgen" / "pathgen_test_image.csv").is_file()


def test_patch_density_and_tissue_are_visible():
    def purple(case: PatchCase) -> float:
        rgb = draw_patch(case, size=256, rng=np.random.default_rng(0)).astype(float)
        small = rgb.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
        return float(((small[..., 0] < 170) & (small[..., 1] < 120)).mean())

    for tissue in (F.LYMPHOCYTIC_INFILTRATE, F.SQUAMOUS_CELL_CARCINOMA, F.ADENOCARCINOMA):
        low, high = (
            purple(PatchCase(tissue, "low", "moderate")),
            purple(PatchCase(tissue, "high", "moderate")),
        )
        assert high > 1.5 * low + 0.02, tissue
    assert purple(PatchCase(F.LYMPHOCYTIC_INFILTRATE, "high", "mild")) > purple(
        PatchCase(F.NECROSIS, "high", "mild")
    )
    normal = draw_patch(PatchCase(F.NORMAL, "low", "mild"), size=256, rng=np.random.default_rng(0))
    assert (normal.min(axis=2) > 230).mean() > 0.03  # white gland lumens


def test_sites_are_non_iid(out):
    sites = json.loads((out / "sites.json").read_text())["sites"]
    a, b = sites["hospital-a"]["mimic-cxr"]["prevalence"], sites["hospital-b"]["mimic-cxr"]["prevalence"]
    assert b["support_device"] > a["support_device"] + 0.3
    assert sites["public"]["mimic-cxr"]["prevalence"]["left_pneumothorax"] == 0
    lab, d = sites["pathlab-c"]["pathgen"]["prevalence"], sites["hospital-d"]["pathgen"]["prevalence"]
    assert lab["tissue"].get("adenocarcinoma", 0) > d["tissue"].get("adenocarcinoma", 0)
    assert "squamous_cell_carcinoma" not in sites["public"]["pathgen"]["prevalence"]["tissue"]


def test_site_scale_multiplies_only_the_hospitals() -> None:
    config = synthetic.SynthConfig(scale=0.5, site_scale=3)
    assert config.count(80, "site") == 120
    assert config.count(50, "heldout") == 25
    assert config.count(150, "public") == 75
    assert synthetic.SynthConfig(site_scale=0.001).count(80, "site") == 1


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: synthetic.SynthConfig(image_size=4), "synth.image_size=4"),
        (lambda: synthetic.SynthConfig(scale=0), "synth.scale=0"),
        (lambda: synthetic.SynthConfig(site_scale=-1), "synth.site_scale=-1"),
        (
            lambda: synthetic.SiteConfig("x", cxr=synthetic.CxrSiteConfig(prevalence={"nodule": 1.5})),
            "site[x].cxr.prevalence[nodule]=1.5",
        ),
        (
            lambda: synthetic.SiteConfig("x", cxr=synthetic.CxrSiteConfig(prevalence={"edema": 0.1})),
            "site[x].cxr.prevalence='edema'",
        ),
        (lambda: synthetic.SiteConfig("x", cxr=synthetic.CxrSiteConfig(studies=0)), "site[x].cxr.studies=0"),
        (
            lambda: synthetic.SiteConfig("x", pathology=synthetic.PathologySiteConfig(wsi_id_key="id")),
            "site[x].pathology.wsi_id_key",
        ),
        (
            lambda: synthetic.SiteConfig(
                "x", pathology=synthetic.PathologySiteConfig(tissue_mix={"normal": 0})
            ),
            "site[x].pathology.tissue_mix",
        ),
        (
            lambda: synthetic.SiteConfig("Bad Name", pathology=synthetic.PathologySiteConfig()),
            "site.name='Bad Name'",
        ),
        (lambda: synthetic.SiteConfig("x"), "site[x].cxr/pathology"),
        (lambda: ScannerConfig(name="s", modality="MR"), "scanner[s].modality='MR'"),
        (lambda: ScannerConfig(name="s", rescale_slope=2.0), "scanner[s].rescale_slope"),
        (lambda: ScannerConfig(name="s", aspect=1.2), "scanner[s].aspect=1.2"),
    ],
)
def test_bad_config_values_name_the_setting(make, needle):
    with pytest.raises(ConfigError) as err:
        make()
    assert needle in str(err.value)


def _args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    return parser.parse_args(["--out", str(out), "--no-progress", *extra])


def test_cli_run_prints_counts_and_refuses_bad_input(tmp_path, capsys):
    assert (
        synthetic.run(_args(tmp_path / "o", "--scale", "0.02", "--image-size", "16", "--native-scale", "2"))
        == 0
    )
    printed = capsys.readouterr().out
    assert "hospital-b" in printed and "pathlab-c" in printed and "DICOMs" in printed
    assert synthetic.run(_args(tmp_path / "o")) == 2
    assert "not empty" in capsys.readouterr().out
    assert synthetic.run(_args(tmp_path / "p", "--image-size", "3")) == 2
    assert "synth.image_size=3" in capsys.readouterr().out


def test_vocabulary_corpus_is_deterministic():
    texts = synthetic.vocabulary_corpus(seed=1, reports=20, captions=10)
    assert len(texts) == 30 and texts == synthetic.vocabulary_corpus(seed=1, reports=20, captions=10)
    assert any("IMPRESSION:" in t for t in texts) and any("nuclei" in t for t in texts)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_accepts_every_scanner(tmp_path):
    for scanner in SCANNERS:
        rng = np.random.default_rng(0)
        image = draw_cxr(
            CxrCase(devices=("pacemaker",)), view="LATERAL", rows=64, cols=round(64 * scanner.aspect), rng=rng
        )
        path = tmp_path / f"{scanner.name}.dcm"
        meta = ImageMeta(
            10000001,
            50000001,
            "00000000-00000000-00000000-00000000-00000001",
            "LATERAL",
            "21100101",
            "080000.000",
            2,
        )
        write_dicom(path, encode_pixels(image, scanner, rng), scanner=scanner, meta=meta, uid_seed="t")
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert "Error" not in report, f"{scanner.name}: {report}"
