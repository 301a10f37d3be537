"""A federated simulation with Flower in-process (tiny preset, 2 sites, DP on): summary, privacy, resume."""

import dataclasses
import json
import math

import numpy as np
from safetensors.numpy import load_file
from simruns import FED_ROUNDS, tiny_sim

from client.config import load_site_config
from client.protocol import ARRAYS, METRIC_KEYS, METRICS, TrainInstructions, train_reply
from client.train import load_model, run_site_round
from medim.model.lora import apply_lora, trainable_names, trainable_state
from medim.pipeline import Workspace
from server.audit import verify_chain
from server.checkpoint import latest_path
from simulation.run import SimRequest, simulate

SITES = ["hospital-a", "pathlab-c"]
ROUNDS = FED_ROUNDS


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_summary_has_the_documented_fields(fed_run):
    s = summary(fed_run)
    assert s["schema"] == 2 and s["kind"] == "federated"
    assert {
        "config",
        "config_hash",
        "rounds",
        "eval_curves",
        "privacy",
        "totals",
        "final_checkpoint",
        "audit",
    } <= set(s)
    assert [r["round"] for r in s["rounds"]] == list(range(ROUNDS + 1))
    for r in s["rounds"]:
        assert set(r["eval"]) == {"cxr", "pathology"}
        assert all(math.isfinite(v["loss"]) for v in r["eval"].values())
    for r in s["rounds"][1:]:
        assert {
            "accepted",
            "rejected",
            "refused",
            "failed",
            "sites",
            "bytes_up",
            "bytes_down",
            "seconds",
        } <= set(r)
        assert sorted(r["sites"]) == SITES and r["seconds"] > 0
    assert s["rounds"][1]["accepted"] == SITES and s["rounds"][1]["bytes_up"] > 0
    assert set(s["privacy"]) == set(SITES) and set(s["config"]["sites"]) == set(SITES)
    assert s["audit"]["ok"] and verify_chain(fed_run / "audit.jsonl").ok
    assert (fed_run / "report.html").read_text().count("<svg") >= 1
    assert latest_path(fed_run / "checkpoints") is not None and s["final_checkpoint"].endswith(
        f"round-{ROUNDS:04d}"
    )


def test_dp_epsilon_grows_and_a_site_over_budget_refuses(fed_run):
    rounds = summary(fed_run)["rounds"][1:]
    for site in SITES:
        eps = [r["sites"][site]["metrics"]["epsilon"] for r in rounds]
        assert all(0 < a <= b for a, b in zip(eps, eps[1:], strict=False)), eps
        trained = [r["sites"][site]["status"] == "accepted" for r in rounds]
        grown = [b > a for a, b in zip(eps, eps[1:], strict=False)]
        assert grown == trained[1:]  # epsilon grows exactly in the rounds the site trained
    refusals = [x for r in rounds for x in r["refused"]]
    assert refusals and all("privacy.epsilon_budget" in x["reason"] for x in refusals)
    for r in rounds:
        for site in (x["site"] for x in r["refused"]):
            assert r["sites"][site]["weight"] == 0 and r["sites"][site]["nbytes"] == 0


def test_the_model_changes_by_exactly_the_aggregated_update(fed_run):
    rounds = summary(fed_run)["rounds"]
    for prev, r in zip(rounds, rounds[1:], strict=False):
        if not r["accepted"]:  # nobody trained: the global model and its loss stay exactly the same
            assert r["global_sha256"] == prev["global_sha256"] and {
                m: v["loss"] for m, v in r["eval"].items()
            } == {m: v["loss"] for m, v in prev["eval"].items()}
        elif len(r["accepted"]) == 1:  # FedAvg of one update is that update
            assert r["update_norm"] == r["sites"][r["accepted"][0]]["norm"] > 0
        else:
            assert r["update_norm"] > 0 and r["global_sha256"] != prev["global_sha256"]


def test_a_resumed_run_ends_bitwise_identical(fed_run, workspace, tmp_path):
    simulate(SimRequest(sim=tiny_sim(workspace), out=tmp_path, rounds=1, progress=False))
    assert summary(tmp_path)["rounds"][-1]["round"] == 1
    simulate(SimRequest(sim=tiny_sim(workspace), out=tmp_path, rounds=ROUNDS, resume=True, progress=False))
    resumed = load_file(str(latest_path(tmp_path / "checkpoints") / "trainable.safetensors"))
    straight = load_file(str(latest_path(fed_run / "checkpoints") / "trainable.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all(np.array_equal(resumed[k], straight[k]) for k in straight)
    a, b = summary(tmp_path), summary(fed_run)
    assert [r["global_sha256"] for r in a["rounds"]] == [r["global_sha256"] for r in b["rounds"]]
    assert a["privacy"] == b["privacy"]
    events = [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert "resume" in events and verify_chain(tmp_path / "audit.jsonl").ok


def test_a_site_round_sends_only_the_trainable_set(fed_run, workspace, tmp_path):
    site = load_site_config(fed_run / "sites" / "hospital-a" / "site.yaml")
    site = dataclasses.replace(site, state_dir=str(tmp_path))  # a fresh ledger
    model = Workspace.load(workspace).load_base()
    state = trainable_state(apply_lora(model))
    result = run_site_round(site, TrainInstructions(1, 2, 1e-3, 4, 0, 0), state)
    content = train_reply(site=site.name, state=result.state, metrics=result.metrics)
    assert list(content[ARRAYS].keys()) == trainable_names(load_model(site, state))
    assert set(content[METRICS]) == METRIC_KEYS | {"loss-cxr"}
    assert result.metrics["num-examples"] == 11 and result.metrics["epsilon"] > 0
