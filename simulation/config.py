"""Typed simulation settings (the ``sim`` config group, presets under ``configs/sim/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medim.config import check, check_positive

BASELINES = ("", "central")


@dataclass
class SimConfig:
    """A federation on one machine: which workspace to build, which sites join, which fl/site/dp presets apply.

    ``preset`` names the model/tokenizer/train presets of the workspace; ``sites`` empty means every site of the
    workspace; ``pretrain_steps`` 0 means the train preset's steps; ``workspace`` empty means ``<out>/workspace``.
    Every site gets the privacy preset ``dp``; ``site_epsilon`` gives some sites their own epsilon budget (sites
    differ); ``dp_seed`` fixes every site's DP sampling and noise (reproducible tests only: it voids the guarantee).
    """

    preset: str = "small"
    fl: str = "small"
    site: str = "default"
    dp: str = "default"
    sites: list[str] = field(default_factory=list)
    synth_scale: float = 1.0
    pretrain_steps: int = 0
    num_cpus: float = 1.0
    workspace: str = ""
    seed: int = 0
    site_epsilon: dict[str, float] = field(default_factory=dict)
    dp_seed: int | None = None
    baseline: str = ""

    def __post_init__(self) -> None:
        check_positive("sim.synth_scale", self.synth_scale)
        check(self.pretrain_steps >= 0, "sim.pretrain_steps", self.pretrain_steps, ">= 0 (0 = train preset)")
        check_positive("sim.num_cpus", self.num_cpus)
        check(len(set(self.sites)) == len(self.sites), "sim.sites", self.sites, "distinct site names")
        for site, eps in self.site_epsilon.items():
            check(eps > 0, f"sim.site_epsilon.{site}", eps, "> 0")
        check(self.baseline in BASELINES, "sim.baseline", self.baseline, "'' or 'central'")
