"""The SecAgg+ path's fit config: the same round task the regular loop sends (no Flower run)."""

from __future__ import annotations

from client.protocol import TrainInstructions
from server.config import FLConfig
from server.loop import round_instructions
from server.secagg import fit_config


def _parsed(fl: FLConfig, server_round: int) -> TrainInstructions:
    return TrainInstructions(**{k.replace("-", "_"): v for k, v in fit_config(fl, server_round).items()})


def test_fedprox_mu_reaches_sites_under_secagg() -> None:
    fl = FLConfig(strategy="fedprox", proximal_mu=0.3, lr=1e-3, local_steps=7, batch_size=5)
    assert _parsed(fl, 3) == round_instructions(fl, 3)
    assert fit_config(fl, 3)["proximal-mu"] == 0.3
    assert fit_config(fl, 3)["server-round"] == 3


def test_no_proximal_term_without_fedprox() -> None:
    assert fit_config(FLConfig(strategy="fedavg"), 1)["proximal-mu"] == 0.0
