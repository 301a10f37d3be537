"""Aggregation, strategy factory and state, checkpoints, audit log (plain functions, no Flower runtime)."""

import json
import random

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from medim.config import ConfigError, load_preset
from server.audit import AuditLog, verify_chain
from server.checkpoint import LATEST, ServerState, latest_path, load_state, save_state
from server.config import STRATEGIES, FLConfig, ValidationConfig
from server.strategies import aggregate, load_strategy_state, make_strategy, strategy_state
from server.validation import ACCEPTED, Verdict

GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}


def verdict(site, weight, seed):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in GLOBAL.items()}
    return Verdict(site=site, status=ACCEPTED, weight=weight, arrays=arrays)


def test_fedavg_equals_the_hand_computed_weighted_mean():
    updates = [verdict("c", 5, 0), verdict("a", 1, 1), verdict("b", 30, 2)]
    out = aggregate(make_strategy(FLConfig()), 1, updates, global_arrays=GLOBAL)
    total = sum(u.weight for u in updates)
    for key in GLOBAL:
        expected = sum(u.weight * u.arrays[key].astype(np.float64) for u in updates) / total
        np.testing.assert_allclose(out[key], expected, rtol=0, atol=1e-6)
    assert out["w"].dtype == np.float32


def test_the_capped_weight_is_what_counts():
    big = verdict("a", 100, 0)
    small = verdict("b", 1, 1)
    capped = Verdict(
        site="a", status=ACCEPTED, weight=1, reported_examples=100, capped=True, arrays=big.arrays
    )
    out = aggregate(make_strategy(FLConfig()), 1, [capped, small], global_arrays=GLOBAL)
    np.testing.assert_allclose(out["b"], (big.arrays["b"] + small.arrays["b"]) / 2, atol=1e-6)


def test_aggregation_is_independent_of_reply_order():
    updates = [verdict(s, w, i) for i, (s, w) in enumerate([("a", 3), ("b", 7), ("c", 11)])]
    one = aggregate(make_strategy(FLConfig()), 1, updates, global_arrays=GLOBAL)
    two = aggregate(make_strategy(FLConfig()), 1, updates[::-1], global_arrays=GLOBAL)
    assert all(np.array_equal(one[k], two[k]) for k in GLOBAL)


def test_no_accepted_updates_means_no_new_state():
    assert aggregate(make_strategy(FLConfig()), 1, [], global_arrays=GLOBAL) is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedprox", FedProx),
        ("fedadam", FedAdam),
        ("fedtrimmedavg", FedTrimmedAvg),
        ("fedmedian", FedMedian),
        ("krum", Krum),
    ],
)
def test_strategy_factory(name, cls):
    cfg = FLConfig(strategy=name, proximal_mu=0.1 if name == "fedprox" else 0.0)
    strategy = make_strategy(cfg)
    assert type(strategy) is cls
    out = aggregate(
        strategy, 1, [verdict("a", 2, 0), verdict("b", 2, 1), verdict("c", 2, 2)], global_arrays=GLOBAL
    )
    assert set(out) == set(GLOBAL) and all(np.isfinite(v).all() for v in out.values())
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedadam", "fedtrimmedavg", "fedmedian", "krum"}


def test_fedadam_state_round_trips():
    cfg = FLConfig(strategy="fedadam")
    first = make_strategy(cfg)
    aggregate(first, 1, [verdict("a", 1, 0)], global_arrays=GLOBAL)
    state = strategy_state(first)
    assert {k.split("/")[0] for k in state} == {"m", "v"}
    resumed = make_strategy(cfg)
    load_strategy_state(resumed, state)
    nxt = [verdict("a", 1, 5)]
    a = aggregate(first, 2, nxt, global_arrays=GLOBAL)
    b = aggregate(resumed, 2, nxt, global_arrays=GLOBAL)
    assert all(np.array_equal(a[k], b[k]) for k in GLOBAL)
    assert strategy_state(make_strategy(FLConfig())) == {}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"strategy": "fedsgd"}, "fl.strategy='fedsgd'"),
        ({"strategy": "fedprox", "proximal_mu": 0.0}, "fl.proximal_mu=0.0 is invalid: allowed > 0 with"),
        ({"rounds": 0}, "fl.rounds=0"),
        ({"fraction": 0.0}, "fl.fraction=0.0"),
        ({"trim_beta": 0.5}, "fl.trim_beta=0.5"),
        ({"validation": {"max_update_norm": -1.0}}, "fl.validation.max_update_norm=-1.0"),
    ],
)
def test_config_errors_name_the_setting(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        FLConfig(**kwargs)
    assert needle in str(err.value)


def test_fl_presets_load_and_unknown_settings_are_named():
    for name in ("tiny", "small"):
        cfg = load_preset(FLConfig, "fl", name)
        assert isinstance(cfg.validation, ValidationConfig)
    with pytest.raises(ConfigError, match="rounds_total"):
        load_preset(FLConfig, "fl", "tiny", rounds_total=3)


def state(round_=1):
    return ServerState(
        round=round_,
        trainable={k: v + round_ for k, v in GLOBAL.items()},
        config_hash="abc",
        strategy={"m/w": np.ones((2, 2), np.float32)},
        ledger={"hospital-a": {"epsilon": 0.5, "delta": 1e-5, "steps": 10.0}},
        history=[{"round": round_, "accepted": ["hospital-a"]}],
        audit_head="f" * 64,
    )


def test_checkpoint_round_trip_restores_everything(tmp_path):
    random.seed(7)
    torch.manual_seed(7)
    saved = state()
    saved.capture_rng()
    expected_py, expected_torch = random.random(), torch.rand(3)
    path = save_state(tmp_path, saved)
    random.seed(0)
    torch.manual_seed(0)
    loaded = load_state(latest_path(tmp_path))
    assert path == tmp_path / "round-0001" and loaded.round == 1 and loaded.config_hash == "abc"
    assert all(np.array_equal(loaded.trainable[k], saved.trainable[k]) for k in GLOBAL)
    assert np.array_equal(loaded.strategy["m/w"], saved.strategy["m/w"])
    assert loaded.ledger == saved.ledger and loaded.history == saved.history and loaded.audit_head == "f" * 64
    loaded.restore_rng()
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)


def test_checkpoint_write_is_atomic_and_pruned(tmp_path):
    save_state(tmp_path, state(1), keep=2)
    # a crash while writing round 2: the half-written folder is ignored, LATEST still names round 1
    (tmp_path / ".round-0002.tmp").mkdir()
    (tmp_path / ".round-0002.tmp" / "trainable.safetensors").write_bytes(b"partial")
    assert latest_path(tmp_path) == tmp_path / "round-0001"
    for r in (2, 3, 4):
        save_state(tmp_path, state(r), keep=2)
    assert sorted(p.name for p in tmp_path.glob("round-*")) == ["round-0003", "round-0004"]
    assert (tmp_path / LATEST).read_text() == "round-0004" and not (tmp_path / ".round-0002.tmp").exists()
    assert latest_path(tmp_path / "nothing") is None


def test_audit_chain_verifies_and_detects_tampering(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("round_start", round=1)
    log.append("rejected", round=1, site="b", reason="b: non-finite values")
    log.append("accepted", round=1, site="a", weight=10)
    check = verify_chain(path)
    assert check.ok and check.entries == 3 and check.head == log.head
    assert AuditLog(path).seq == 3  # reopening continues the chain

    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["reason"] = "all fine"
    path.write_text("\n".join([lines[0], json.dumps(forged), lines[2]]) + "\n")
    broken = verify_chain(path)
    assert not broken.ok and "line 2: hash" in broken.problem
    with pytest.raises(ValueError, match="corrupt"):
        AuditLog(path)

    path.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a removed entry
    assert not verify_chain(path).ok
