"""Session fixture for the Flower simulations: one tiny workspace (small synthetic hospitals, 3 pretrain steps)."""

from pathlib import Path

import pytest

from medim.config import load_preset
from simulation.config import SimConfig
from simulation.run import prepare_workspace


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fed-ws")
    sim = load_preset(SimConfig, "sim", "tiny", workspace=str(root))
    prepare_workspace(sim, root, progress=False)
    return root
