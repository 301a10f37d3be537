"""Shared by the simulation tests: the tiny sim config they run and the length of the shared uninterrupted run."""

from pathlib import Path

from medim.config import load_preset
from simulation.config import SimConfig

FED_ROUNDS = 3


def tiny_sim(workspace: Path, **overrides) -> SimConfig:
    """The tiny preset (2 sites) with DP on and seeded DP noise, on the shared workspace."""
    return load_preset(SimConfig, "sim", "tiny", workspace=str(workspace), dp_seed=0, **overrides)
