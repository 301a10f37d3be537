"""Robust aggregation against one attacker of five, on the server's own path (server.strategies.aggregate).

Four honest sites send updates scattered around a common direction; the fifth sends its update x100 or sign
flipped (both pass every per-update bound a coordinator could set from honest norms when the bound is loose).
Trimmed mean and coordinate-wise median keep the global update within 10% of the honest sites' mean update;
FedAvg does not (so the attack is real).
"""

import numpy as np
import pytest

from server.config import FLConfig
from server.strategies import aggregate, make_strategy
from server.validation import ACCEPTED, Verdict

SHAPES = {"lora_A": (8, 32), "lora_B": (32, 8), "time.mlp": (16,)}


def updates(attack: str, seed: int = 0):
    """Global state, the honest sites' mean update, and five verdicts (site-e attacks)."""
    rng = np.random.default_rng(seed)
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    direction = {k: rng.normal(size=s).astype(np.float32) * 0.01 for k, s in SHAPES.items()}
    honest = [
        {k: direction[k] + rng.normal(size=s).astype(np.float32) * 0.0015 for k, s in SHAPES.items()}
        for _ in range(5)
    ]
    factor = {"scale100": 100.0, "sign_flip": -1.0}[attack]
    sent = [*honest[:4], {k: factor * v for k, v in honest[4].items()}]
    verdicts = [
        Verdict(
            site=f"site-{'abcde'[i]}",
            status=ACCEPTED,
            weight=10,
            arrays={k: glob[k] + u[k] for k in SHAPES},
        )
        for i, u in enumerate(sent)
    ]
    mean = {k: np.mean([u[k] for u in honest[:4]], axis=0) for k in SHAPES}
    return glob, mean, verdicts


def relative_error(new, glob, mean) -> float:
    diff = np.sqrt(sum(np.sum((new[k] - glob[k] - mean[k]) ** 2) for k in SHAPES))
    return float(diff / np.sqrt(sum(np.sum(mean[k] ** 2) for k in SHAPES)))


def aggregated_error(strategy: str, attack: str) -> float:
    glob, mean, verdicts = updates(attack)
    cfg = FLConfig(strategy=strategy, trim_beta=0.2)
    new = aggregate(make_strategy(cfg), 1, verdicts, global_arrays=glob)
    assert new is not None
    return relative_error(new, glob, mean)


@pytest.mark.parametrize("attack", ["scale100", "sign_flip"])
@pytest.mark.parametrize("strategy", ["fedtrimmedavg", "fedmedian"])
def test_robust_strategies_stay_within_10_percent_of_the_honest_mean(strategy, attack):
    assert aggregated_error(strategy, attack) < 0.10


@pytest.mark.parametrize("attack", ["scale100", "sign_flip"])
def test_fedavg_is_moved_by_the_attacker(attack):
    assert aggregated_error("fedavg", attack) > 0.3


def test_without_an_attacker_all_agree_with_the_honest_mean():
    glob, mean, verdicts = updates("scale100")
    honest = verdicts[:4]
    for strategy in ("fedavg", "fedtrimmedavg", "fedmedian"):
        new = aggregate(make_strategy(FLConfig(strategy=strategy)), 1, honest, global_arrays=glob)
        assert new is not None and relative_error(new, glob, mean) < (1e-5 if strategy == "fedavg" else 0.1)
