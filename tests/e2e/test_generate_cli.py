"""`medim-generate` as a real process: the installed console script on a LoRA checkpoint and a synthetic DICOM."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import medim
from medim.config import load_preset
from medim.data.synthetic import SynthConfig, generate
from medim.model.checkpoint import save_checkpoint
from medim.tokenize.vq import VQTokenizer
from medim.tokenize.vq_config import TokenizerConfig


def _script() -> list[str]:
    installed = Path(sys.executable).parent / "medim-generate"
    found = str(installed) if installed.is_file() else shutil.which("medim-generate")
    return [found] if found else [sys.executable, "-m", "medim.generate"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-e2e")
    model = medim.build_model("tiny", lora=True, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    save_checkpoint(model, root / "site")
    torch.manual_seed(0)
    VQTokenizer(load_preset(TokenizerConfig, "tokenizer", "tiny")).save(root / "vq")
    generate(SynthConfig(seed=1, image_size=32, scale=0.02), root / "synth", show_progress=False)
    return root


def _run(setup: Path, *args: str) -> subprocess.CompletedProcess:
    base = ["--model", str(setup / "site"), "--tokenizer", str(setup / "vq"), "--steps", "3"]
    cmd = [*_script(), args[0], *base, *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_image_to_report_and_pairs_as_processes(setup: Path, tmp_path: Path):
    dicom = next((setup / "synth" / "heldout" / "mimic-cxr").rglob("*.dcm"))
    out = tmp_path / "i2r"
    proc = _run(setup, "image-to-report", "--out", str(out), "--images", str(dicom), "--merge", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((out / "generations.jsonl").read_text())
    assert row["task"] == "image-to-report" and row["inputs"] == {"image": str(dicom), "modality": "cxr"}
    assert row["seed"] == 3 and row["sampler"]["steps"] == 3
    with Image.open(out / row["image"]) as png:
        assert png.mode == "L" and png.size == (32, 32)
    run = json.loads((out / "run.json").read_text())
    assert run["merged"] and run["model"] == str((setup / "site").resolve()) and run["status"] == "finished"

    pairs = tmp_path / "pairs"
    proc = _run(
        setup, "pairs", "--out", str(pairs), "--n", "2", "--prompt", "the heart is", "--batch-size", "2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (pairs / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["pair-0000", "pair-0001"]
    assert all((pairs / r["image"]).is_file() and r["report"].startswith("the heart is") for r in rows)


def test_a_bad_setting_exits_2_naming_it(setup: Path, tmp_path: Path):
    missing = tmp_path / "missing.dcm"
    proc = _run(setup, "image-to-report", "--out", str(tmp_path / "o"), "--images", str(missing))
    assert proc.returncode == 2 and f"--images {missing}: no such file or folder" in proc.stderr
