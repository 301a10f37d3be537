"""``--privacy-report``: privacy evidence for a finished run lands in summary.json and report.html."""

import json
import math
import shutil

import pytest

from client.config import load_site_config
from medim.pipeline import Workspace
from simulation.privacy_report import add_privacy_evidence, privacy_evidence


def test_privacy_evidence_is_measured_and_reported(fed_run, workspace, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(fed_run, out, ignore=shutil.ignore_patterns("sites"))
    site = load_site_config(fed_run / "sites" / "hospital-a" / "site.yaml")
    spent = site.ledger_path.read_text()
    evidence = privacy_evidence(
        out, Workspace.load(workspace), site, steps=8, max_records=16, generations=2, sampler_steps=4
    )
    mia = evidence["membership_inference"]
    assert set(mia) == {"no_dp", "dp", "federated_global"}
    assert mia["no_dp"]["epsilon"] == math.inf
    assert mia["dp"]["epsilon"] == pytest.approx(site.privacy.epsilon_budget, rel=0.02)
    assert all(0 <= r["auc"] <= 1 and r["members"] > 0 and r["nonmembers"] > 0 for r in mia.values())
    leak = evidence["gradient_leakage"]
    assert leak["raw"]["auc"] > leak["dp"]["auc"]
    memo = evidence["memorisation"]
    assert memo["generated"]["reports"] == 2 and memo["heldout_baseline"]["reports"] > 0
    assert site.ledger_path.read_text() == spent  # the evidence models keep their own ledgers
    assert sorted(p.name for p in (out / "privacy-evidence").iterdir()) == [
        "hospital-a-dp-ledger.json",
        "hospital-a-no_dp-ledger.json",
    ]

    add_privacy_evidence(out / "summary.json", evidence)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy_evidence"]["membership_inference"]["no_dp"]["epsilon"] is None  # inf -> null
    assert "Privacy evidence (hospital-a, cxr)" in (out / "report.html").read_text()
