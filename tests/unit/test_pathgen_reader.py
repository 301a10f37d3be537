"""PathGen indexing: JSON + patch folder, flat PNG + TXT, MeDiM split CSVs, deterministic hash split."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from medim.config import ConfigError
from medim.data.archive import ArchiveError
from medim.data.pathgen import PathGenOptions, hash_split, index_pathgen

SAMPLE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "pathgen-sample" / "PathGen-1.6M_sample.json"
)


def write_patch(path: Path, rgb: tuple[int, int, int] = (200, 120, 180)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), rgb).save(path)


def entries() -> list:
    return [
        {
            "wsi_id": "TCGA-AA-0001",
            "position": ["100", "200"],
            "caption": "Dense  sheets of\n atypical cells.",
            "file_id": "u1",
        },
        {"WSI_id": "TCGA-AA-0002", "position": ["0", "672"], "caption": "Benign glands."},
        {"wsi_id": "TCGA-AA-0003", "position": ["5", "5"], "caption": "No image for me."},
        {"wsi_id": "TCGA-AA-0004", "position": ["x", "5"], "caption": "Bad position."},
        {"wsi_id": "TCGA-AA-0005", "position": ["1", "2"], "caption": "   "},
        {"position": ["1", "2"], "caption": "No slide id."},
        "not an object",
        {"wsi_id": "TCGA-AA-0001", "position": ["100", "200"], "caption": "Duplicate."},
    ]


def build_json_archive(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.json").write_text(json.dumps(entries()))
    write_patch(root / "patches" / "TCGA-AA-0001_100_200.png")
    write_patch(root / "patches" / "TCGA-AA-0002_0_672.png")
    write_patch(root / "patches" / "TCGA-AA-0005_1_2.png")
    write_patch(root / "patches" / "stray_9_9.png")
    return root


def test_json_layout_with_both_key_spellings(tmp_path):
    index = index_pathgen(build_json_archive(tmp_path), options=PathGenOptions())
    by_id = {c.record.id: c.record for c in index.candidates}
    assert sorted(by_id) == ["TCGA-AA-0001_100_200", "TCGA-AA-0002_0_672"]
    first = by_id["TCGA-AA-0001_100_200"]
    assert first.report == "Dense sheets of atypical cells."
    assert (first.modality, first.wsi_id, first.source) == (
        "pathology",
        "TCGA-AA-0001",
        "patches/TCGA-AA-0001_100_200.png",
    )
    assert by_id["TCGA-AA-0002_0_672"].wsi_id == "TCGA-AA-0002"
    assert {s.path: s.reason for s in index.skipped} == {
        "captions.json[2]": "missing_image",
        "captions.json[3]": "malformed_entry",
        "captions.json[4]": "empty_report",
        "captions.json[5]": "malformed_entry",
        "captions.json[6]": "malformed_entry",
        "captions.json[7]": "duplicate_entry",
        "patches/TCGA-AA-0005_1_2.png": "not_in_captions",
        "patches/stray_9_9.png": "not_in_captions",
    }


def test_flat_png_txt_layout(tmp_path):
    write_patch(tmp_path / "TCGA-BB-0001_672_1344.png")
    (tmp_path / "TCGA-BB-0001_672_1344.txt").write_text("Necrotic tumour\nwith mitoses.\n")
    write_patch(tmp_path / "sub" / "plain-name.png")
    (tmp_path / "sub" / "plain-name.txt").write_text("Normal mucosa.")
    write_patch(tmp_path / "nocaption.png")
    write_patch(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("\n")
    index = index_pathgen(tmp_path, options=PathGenOptions())
    by_id = {c.record.id: c.record for c in index.candidates}
    assert by_id["TCGA-BB-0001_672_1344"].report == "Necrotic tumour with mitoses."
    assert by_id["TCGA-BB-0001_672_1344"].wsi_id == "TCGA-BB-0001"
    assert by_id["plain-name"].wsi_id is None and by_id["plain-name"].source == "sub/plain-name.png"
    assert {s.path: s.reason for s in index.skipped} == {
        "nocaption.png": "missing_caption",
        "empty.png": "empty_report",
    }


def test_hash_split_is_deterministic_and_matches_sha256(tmp_path):
    opts = PathGenOptions(validate_fraction=0.1, test_fraction=0.2)
    key = "TCGA-AA-0001_100_200"
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    expected = "test" if u < 0.2 else "validate" if u < 0.3 else "train"
    assert hash_split(key, opts) == expected
    counts = Counter(hash_split(f"slide_{i}_0", opts) for i in range(4000))
    assert abs(counts["test"] / 4000 - 0.2) < 0.03 and abs(counts["validate"] / 4000 - 0.1) < 0.03
    first = [c.record.split for c in index_pathgen(build_json_archive(tmp_path), options=opts).candidates]
    again = [c.record.split for c in index_pathgen(tmp_path, options=opts).candidates]
    assert first == again


def test_split_by_wsi_keeps_a_slide_together(tmp_path):
    for x in range(0, 672 * 20, 672):
        write_patch(tmp_path / f"TCGA-CC-0001_{x}_0.png")
        (tmp_path / f"TCGA-CC-0001_{x}_0.txt").write_text("Tumour.")
    index = index_pathgen(tmp_path, options=PathGenOptions(split_by="wsi", test_fraction=0.5))
    assert len({c.record.split for c in index.candidates}) == 1
    assert index.candidates[0].record.split == hash_split("TCGA-CC-0001", PathGenOptions(test_fraction=0.5))


def test_medim_split_csvs(tmp_path):
    root = build_json_archive(tmp_path)
    (root / "pathgen_train.csv").write_text("image,caption\npatches/TCGA-AA-0001_100_200.png,x\n")
    (root / "pathgen_test_report.csv").write_text("image,caption\nTCGA-AA-0002_0_672.png,y\n")
    index = index_pathgen(root, options=PathGenOptions())
    assert {c.record.id: c.record.split for c in index.candidates} == {
        "TCGA-AA-0001_100_200": "train",
        "TCGA-AA-0002_0_672": "test",
    }
    (root / "pathgen_test_report.csv").write_text("image,caption\n")
    index = index_pathgen(root, options=PathGenOptions())
    assert {s.path: s.reason for s in index.skipped}["patches/TCGA-AA-0002_0_672.png"] == "not_in_split"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ArchiveError, match="not a folder"):
        index_pathgen(tmp_path / "nope", options=PathGenOptions())
    with pytest.raises(ArchiveError, match="no captions JSON"):
        index_pathgen(tmp_path, options=PathGenOptions())
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(ArchiveError, match=r"a\.json: cannot be read as JSON"):
        index_pathgen(tmp_path, options=PathGenOptions())
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(ArchiveError, match="several JSON files"):
        index_pathgen(tmp_path, options=PathGenOptions())
    with pytest.raises(ConfigError, match="pathgen.test_fraction"):
        PathGenOptions(test_fraction=1.5)
    with pytest.raises(ConfigError, match="pathgen.split_by"):
        PathGenOptions(split_by="slide")


@pytest.mark.skipif(not SAMPLE.is_file(), reason="public PathGen sample not available (../shared)")
def test_public_sample_schema(tmp_path):
    data = json.loads(SAMPLE.read_text())
    expected = {}
    for item in data[:3]:
        pid = f"{item['wsi_id']}_{int(item['position'][0])}_{int(item['position'][1])}"
        expected[pid] = " ".join(item["caption"].split())
        write_patch(tmp_path / f"{pid}.png")
    index = index_pathgen(tmp_path, options=PathGenOptions(captions=SAMPLE))
    assert {c.record.id: c.record.report for c in index.candidates} == expected
    assert Counter(s.reason for s in index.skipped) == {"missing_image": len(data) - 3}
