"""Fault plans in a Flower simulation: the run completes, every bad reply is rejected (or capped) and audited,
a dropped site rejoins; a x100 attacker accepted by a loose norm bound is held back by the median."""

import json
import math
from pathlib import Path

import pytest
from simruns import tiny_sim

from server.audit import verify_chain
from simulation.faults import Fault, FaultPlan, load_fault_plan
from simulation.run import SimRequest, simulate


def run_plan(workspace: Path, out: Path, name: str, rounds: int) -> dict:
    plan = load_fault_plan(name)
    sim = tiny_sim(workspace, dp="off", sites=plan.sites)
    simulate(SimRequest(sim=sim, out=out, rounds=rounds, progress=False, fl_overrides=plan.fl, faults=plan))
    return json.loads((out / "summary.json").read_text())


def outcome(summary: dict, server_round: int, site: str) -> tuple[str, str]:
    r = summary["rounds"][server_round]
    reasons = {x["site"]: x["reason"] for key in ("rejected", "failed") for x in r[key]}
    return r["sites"][site]["status"], reasons.get(site, "")


@pytest.mark.slow
def test_mixed_faults_are_rejected_audited_and_the_run_completes(workspace, tmp_path):
    s = run_plan(workspace, tmp_path, "mixed", rounds=4)
    expected = {
        (1, "hospital-a"): ("failed", "injected crash"),
        (1, "hospital-b"): ("rejected", "non-finite values"),
        (1, "pathlab-c"): ("rejected", "unexpected ['backbone.model.embed_tokens.weight']"),
        (1, "hospital-d"): ("accepted", ""),
        (2, "hospital-a"): ("accepted", ""),  # the crashed site rejoins
        (2, "hospital-b"): ("failed", "no reply before the timeout"),
        (2, "pathlab-c"): ("rejected", "shape"),
        (2, "hospital-d"): ("rejected", "non-finite values"),
        (3, "hospital-a"): ("rejected", "exceeds fl.validation.max_update_norm=20.0"),
        (3, "hospital-b"): ("accepted", ""),  # the slow site rejoins
        (3, "pathlab-c"): ("rejected", "round mismatch: reply is for round 2, expected 3"),
        (3, "hospital-d"): ("rejected", "exceeds fl.validation.max_update_norm=20.0"),
        (4, "hospital-a"): ("accepted", ""),  # inflated num-examples: capped
        (4, "hospital-b"): ("accepted", ""),  # sign flip: honest-looking norm
    }
    for (server_round, site), (status, reason) in expected.items():
        got = outcome(s, server_round, site)
        assert got[0] == status and reason in got[1], (server_round, site, got)
    assert (
        s["rounds"][4]["sites"]["hospital-a"]["capped"]
        and s["rounds"][4]["sites"]["hospital-a"]["weight"] == 1000
    )
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2, 3, 4]
    for r in s["rounds"][1:]:
        assert r["accepted"] and all(math.isfinite(v["loss"]) for v in r["eval"].values())
    assert s["totals"]["rejected"] == 7 and s["totals"]["failed"] == 2
    log = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    audited = {(e["round"], e["site"]): e["reason"] for e in log if e["event"] in ("rejected", "failed")}
    assert len(audited) == 9 and all(audited.values())
    assert verify_chain(tmp_path / "audit.jsonl").ok


@pytest.mark.slow
def test_the_median_holds_back_an_accepted_x100_attacker(workspace, tmp_path):
    s = run_plan(workspace, tmp_path, "byzantine", rounds=2)
    first = s["rounds"][0]["eval"]
    for r in s["rounds"][1:]:
        assert len(r["accepted"]) == 4  # the attack passes validation
        honest = [v["norm"] for site, v in r["sites"].items() if site != "hospital-b"]
        assert r["sites"]["hospital-b"]["norm"] > 50 * max(honest)
        # coordinate-wise median of 4 lies between honest values: |median| <= sqrt(3) * largest honest norm
        assert r["update_norm"] <= math.sqrt(3) * max(honest)
        for modality, loss in r["eval"].items():
            assert loss["loss"] < first[modality]["loss"] + 0.5


@pytest.mark.slow
def test_a_site_whose_worker_is_killed_fails_that_round_and_rejoins(workspace, tmp_path):
    plan = FaultPlan(
        faults=[Fault(site="hospital-a", kind="killed", rounds=[1])],
        sites=["hospital-a", "pathlab-c"],
        fl={"generation": {"every": 0}},
    )
    sim = tiny_sim(workspace, dp="off", sites=plan.sites)
    simulate(SimRequest(sim=sim, out=tmp_path, rounds=3, progress=False, fl_overrides=plan.fl, faults=plan))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert outcome(s, 1, "hospital-a")[0] == "failed"
    for server_round in (2, 3):  # a fresh worker takes the site's next messages (Ray restarts the actor)
        assert outcome(s, server_round, "hospital-a") == ("accepted", "")
    assert all(outcome(s, r, "pathlab-c") == ("accepted", "") for r in (1, 2, 3))
