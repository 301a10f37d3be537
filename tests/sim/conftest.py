"""Session fixtures for the Flower simulations: one tiny workspace (small synthetic hospitals, 3 pretrain steps)
and one uninterrupted 3-round run on it (DP on, seeded noise) that several modules compare against."""

from pathlib import Path

import pytest
from simruns import FED_ROUNDS, tiny_sim

from medim.config import load_preset
from simulation.config import SimConfig
from simulation.run import SimRequest, prepare_workspace, simulate


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fed-ws")
    sim = load_preset(SimConfig, "sim", "tiny", workspace=str(root))
    prepare_workspace(sim, root, progress=False)
    return root


@pytest.fixture(scope="session")
def fed_run(workspace, tmp_path_factory) -> Path:
    """An uninterrupted run of ``FED_ROUNDS`` rounds; returns its output folder."""
    out = tmp_path_factory.mktemp("fed-run")
    simulate(SimRequest(sim=tiny_sim(workspace), out=out, rounds=FED_ROUNDS, progress=False))
    return out
