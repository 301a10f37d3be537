"""`medim-train` as a real process: workspace, central training, held-out evaluation, summary and report."""

import json
import subprocess
import sys
from pathlib import Path


def test_medim_train_tiny_end_to_end(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from medim.cli import train_main; raise SystemExit(train_main())"]
    args = ["--preset", "tiny", "--out", str(out), "--scale", "0.15", "--steps", "6", "--samples", "2"]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job"] == "central" and summary["train"]["steps"] == 6
    assert set(summary["heldout"]) == {"cxr", "pathology"}
    for part in summary["heldout"].values():
        loss = part["loss"]
        assert loss["loss"] > 0 and abs(loss["image"] + loss["text"] - loss["loss"]) < 1e-6
        assert part["samples"] == 2
    assert 0 <= summary["heldout"]["cxr"]["report_findings"]["micro_f1"] <= 1
    assert summary["heldout"]["pathology"]["report_findings"]["labeler"] == "synthetic-pathology"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<svg" in page


def test_medim_train_rejects_bad_settings(tmp_path: Path):
    cmd = [sys.executable, "-c", "from medim.cli import train_main; raise SystemExit(train_main())"]
    proc = subprocess.run(
        cmd + ["--preset", "tiny", "--out", str(tmp_path), "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "train.steps=0 is invalid" in proc.stderr
