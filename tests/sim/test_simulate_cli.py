"""`medim-simulate` as a user runs it: Hydra overrides, the summary.json contract, generation metrics, baselines."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulation.cli import main

SETS = {"cxr", "pathology"}


@pytest.fixture(scope="module")
def smoke_run(workspace, tmp_path_factory) -> Path:
    """`medim-simulate sim=smoke hydra.run.dir=DIR` in a subprocess, on the shared tiny workspace."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    cmd = [
        sys.executable,
        "-m",
        "simulation.cli",
        "sim=smoke",
        f"hydra.run.dir={out}",
        f"sim.workspace={workspace}",
    ]
    done = subprocess.run([*cmd, "quiet=true"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_summary_json_contract(smoke_run):
    s = json.loads((smoke_run / "summary.json").read_text())
    assert isinstance(s["config_hash"], str) and len(s["config_hash"]) == 64
    assert s["preset"] == "tiny" and s["strategy"] == "fedavg"
    assert isinstance(s["model_bytes"], int) and 0 < s["trainable_bytes"] < s["model_bytes"]
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2]
    for r in s["rounds"]:
        assert {"round", "train_loss", "eval", "bytes_up", "bytes_down", "seconds"} <= set(r)
        assert set(r["eval"]) == SETS and all(math.isfinite(v["loss"]) for v in r["eval"].values())
    assert s["rounds"][0]["train_loss"] is None
    for r in s["rounds"][1:]:
        assert r["train_loss"] > 0 and r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["seconds"] > 0
    assert set(s["sites"]) == {"hospital-a", "pathlab-c"}
    for site in s["sites"].values():
        assert set(site) == {"modalities", "num_examples", "epsilon", "delta", "rounds_trained"}
        assert site["num_examples"] > 0 and site["rounds_trained"] == 2
        assert site["epsilon"] > 0 and 0 < site["delta"] < 1
    assert s["sites"]["hospital-a"]["modalities"] == ["cxr"]
    assert s["sites"]["pathlab-c"]["modalities"] == ["pathology"]


def test_generation_metrics_at_the_last_round(smoke_run):
    s = json.loads((smoke_run / "summary.json").read_text())
    final = s["rounds"][-1]["eval"]
    for name, values in final.items():
        assert values["report_protocol"] in ("coco", "medim")
        for key in ("bleu1", "bleu4", "rouge_l", "label_f1_micro", "label_f1_macro"):
            assert 0.0 <= values[key] <= 1.0, (name, key)
        assert values["domain_fid"] >= 0 and values["samples"] == 4
    assert 0.0 <= final["cxr"]["chexpert_f1_micro"] <= 1.0
    assert "label_f1_micro" not in s["rounds"][1]["eval"]["cxr"]  # every 2 rounds: not at round 1
    assert set(s["metric_curves"]) == SETS and len(s["metric_curves"]["cxr"]["label_f1_micro"]) == 2
    assert {len(v) for v in s["privacy_curves"].values()} == {2}
    html = (smoke_run / "report.html").read_text()
    assert html.count("<svg") >= 3 and html.count("data:image/png") == 2
    assert json.loads((smoke_run / "samples" / "cxr.json").read_text())["reports"]


def test_bad_override_exits_2_naming_the_setting(capsys):
    assert main(["sim=smoke", "fl.rounds=0"]) == 2
    assert "fl.rounds" in capsys.readouterr().err
    assert main(["sim=smoke", "baseline=nope"]) == 2
    assert "baseline" in capsys.readouterr().err


def test_compare_writes_the_table(smoke_run, workspace, tmp_path):
    """The smoke run is a federated-dp run of the same settings: compare re-uses it and runs the other three."""
    out = tmp_path / "cmp"
    (out / "federated-dp").mkdir(parents=True)
    shutil.copy(smoke_run / "summary.json", out / "federated-dp" / "summary.json")
    args = ["compare", "sim=smoke", f"hydra.run.dir={out}", f"sim.workspace={workspace}", "quiet=true"]
    assert main(args) == 0
    table = json.loads((out / "compare.json").read_text())
    models = [r["model"] for r in table["rows"]]
    assert models == [
        "central",
        "central-large-batch",
        "local hospital-a",
        "local pathlab-c",
        "federated",
        "federated-dp",
    ]
    assert set(table["sets"]) == SETS
    for row in table["rows"]:
        assert set(row["loss"]) == SETS and set(row["label_f1"]) == SETS
        assert all(math.isfinite(v) for v in row["loss"].values())
        assert all(0 <= v <= 1 for v in row["label_f1"].values())
    eps = {r["model"]: r["epsilon"] for r in table["rows"]}
    assert eps["federated"] is None and eps["central"] is None and eps["federated-dp"] > 0
    assert (out / "compare.md").read_text().startswith("| model |")
    local = json.loads((out / "local" / "summary.json").read_text())
    assert local["models"]["hospital-a"]["steps"] == 6  # 2 rounds x 3 local steps
    central = json.loads((out / "central" / "summary.json").read_text())["models"]
    assert central["central"]["steps"] == 12 and central["central"]["trained_on"] == [
        "hospital-a",
        "pathlab-c",
    ]
    # the federation's depth (2 rounds x 3 steps) of twice the batch: the same samples in half the steps
    assert central["central-large-batch"]["steps"] == 6
