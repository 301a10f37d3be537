"""Crashes with real processes killed by SIGKILL: the coordinator mid-run, a site mid-training.

Coordinator: a ``simulate`` process (DP on, seeded noise) is killed as soon as the round-1 checkpoint appears, while
the sites wait before round 2 (a ``slow`` fault of a few seconds keeps the kill ahead of any round-2 training),
then resumed. The final model equals the uninterrupted run's bitwise, every round ends once in the audit log, and
the site ledgers hold exactly the uninterrupted spend.

Site: a process training one round is killed after the ledger's write-ahead; the restarted site finds the planned
steps counted (epsilon > 0 and never lower afterwards) and continues from them.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file
from simruns import FED_ROUNDS, tiny_sim

from client.config import load_site_config, save_site_config
from client.protocol import TrainInstructions
from client.train import run_site_round
from medim.model.lora import apply_lora, trainable_state
from medim.pipeline import Workspace
from medim.privacy_ledger import PrivacyLedger
from server.audit import verify_chain
from server.checkpoint import latest_path
from simulation.run import SimRequest, simulate

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = """
import sys
from pathlib import Path
from simruns import tiny_sim
from simulation.faults import Fault, FaultPlan
from simulation.run import SimRequest, simulate
workspace, out, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
sim = tiny_sim(workspace)
plan = FaultPlan(faults=[Fault(site=s, kind="slow", rounds=[2], seconds=20.0) for s in sim.sites])
simulate(SimRequest(sim=sim, out=out, rounds=rounds, progress=False, faults=plan))
"""
SITE = """
import sys
from pathlib import Path
import torch
from client.config import load_site_config
from client.protocol import TrainInstructions
from client.train import load_model, run_site_round
from medim.model.lora import trainable_state
from medim.pipeline import Workspace
from medim.model.lora import apply_lora
site = load_site_config(Path(sys.argv[1]))
state = trainable_state(apply_lora(Workspace.load(Path(sys.argv[2])).load_base()))
run_site_round(site, TrainInstructions(1, int(sys.argv[3]), 1e-3, 4, 0, 0), state)
"""


def start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process and every descendant it started (Ray's head and workers included); the process
    first, so it cannot see its children die and exit on its own (rc 1) before its own SIGKILL lands."""
    try:
        parent = psutil.Process(proc.pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def wait_for(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited (rc={proc.returncode}) before the condition held")
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError("timed out waiting for the process")
        time.sleep(0.05)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_coordinator_killed_after_round_1_resumes_to_the_uninterrupted_result(workspace, fed_run, tmp_path):
    out = tmp_path / "run"
    proc = start(COORDINATOR, str(workspace), str(out), str(FED_ROUNDS))
    try:
        # the commit point is LATEST naming the round (its folder is renamed into place just before)
        wait_for(
            lambda: getattr(latest_path(out / "checkpoints"), "name", "") == "round-0001", proc, timeout=240
        )
    finally:
        kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL
    assert latest_path(out / "checkpoints").name == "round-0001"
    simulate(SimRequest(sim=tiny_sim(workspace), out=out, rounds=FED_ROUNDS, resume=True, progress=False))

    resumed = load_file(str(latest_path(out / "checkpoints") / "trainable.safetensors"))
    straight = load_file(str(latest_path(fed_run / "checkpoints") / "trainable.safetensors"))
    assert resumed.keys() == straight.keys() and all(
        np.array_equal(resumed[k], straight[k]) for k in straight
    )
    log = events(out)
    ends = [e["round"] for e in log if e["event"] == "round_end"]
    assert ends == list(range(1, FED_ROUNDS + 1))  # no round counted twice
    assert [e["event"] for e in log].count("resume") == 1 and verify_chain(out / "audit.jsonl").ok
    a, b = (json.loads((o / "summary.json").read_text()) for o in (out, fed_run))
    assert a["privacy"] == b["privacy"]
    for site in a["privacy"]:
        eps = [r["sites"][site]["metrics"]["epsilon"] for r in a["rounds"][1:]]
        assert eps == sorted(eps) and eps[0] > 0
        ledgers = [o / "sites" / site / "state" / "privacy-ledger.json" for o in (out, fed_run)]
        mine, theirs = (json.loads(p.read_text()) for p in ledgers)
        assert mine["history"] == theirs["history"] and mine["rounds"] == theirs["rounds"]


@pytest.mark.slow
def test_site_killed_mid_training_keeps_its_spend_and_continues(workspace, fed_run, tmp_path):
    site = load_site_config(fed_run / "sites" / "hospital-a" / "site.yaml")
    site = replace(site, state_dir=str(tmp_path / "state"), privacy=replace(site.privacy, epsilon_budget=1e4))
    save_site_config(site, tmp_path / "site.yaml")
    steps = 2000
    proc = start(SITE, str(tmp_path / "site.yaml"), str(workspace), str(steps))
    try:
        wait_for(site.ledger_path.is_file, proc, timeout=120)
        time.sleep(1.0)
        assert proc.poll() is None  # still training when killed
    finally:
        kill_tree(proc)
    ledger = PrivacyLedger.load(
        site.ledger_path, accountant=site.privacy.accountant, delta=site.privacy.delta
    )
    assert ledger.rounds == 1 and sum(e.steps for e in ledger.history) == steps  # the write-ahead
    killed = ledger.epsilon()
    assert killed > 0

    state = trainable_state(apply_lora(Workspace.load(workspace).load_base()))
    result = run_site_round(site, TrainInstructions(2, 2, 1e-3, 4, 0, 0), state)
    assert result.state is not None and result.metrics["epsilon"] > killed
    after = PrivacyLedger.load(site.ledger_path, accountant=site.privacy.accountant, delta=site.privacy.delta)
    assert after.rounds == 2 and sum(e.steps for e in after.history) == steps + 2
