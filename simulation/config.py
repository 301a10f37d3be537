"""Typed simulation settings (the ``sim`` config group, presets under ``configs/sim/``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medim.config import (
    ConfigError,
    build_config,
    check,
    check_choice,
    check_positive,
    config_dir,
    presets,
)
from server.config import FLConfig

BASELINES = ("federated", "central", "local", "compare")


@dataclass
class SimConfig:
    """A federation on one machine: which workspace to build, which sites join, which fl/site/dp presets apply.

    ``preset`` names the model/train presets of the workspace, ``tokenizer`` its image tokenizer preset (empty =
    the one the model preset names); ``sites`` empty means every site of the
    workspace; ``synth_scale`` multiplies every synthetic count, ``site_scale`` the hospitals' counts once more
    (DP-SGD needs records per site); ``pretrain_steps`` 0 means the train preset's steps; ``workspace`` empty means ``<out>/workspace``.
    Every site gets the privacy preset ``dp``; ``site_epsilon`` gives some sites their own epsilon budget (sites
    differ); ``dp_seed`` fixes every site's DP sampling and noise (reproducible tests only: it voids the guarantee).
    ``noise_multiplier`` and ``epsilon_budget`` (null = the preset's) replace the preset's for every site: for
    research sweeps of the privacy/utility trade-off on one machine (a real site's privacy is its own file).
    """

    preset: str = "small"
    tokenizer: str = ""
    fl: str = "small"
    site: str = "default"
    dp: str = "default"
    sites: list[str] = field(default_factory=list)
    synth_scale: float = 1.0
    site_scale: float = 1.0
    pretrain_steps: int = 0
    num_cpus: float = 1.0
    workspace: str = ""
    seed: int = 0
    site_epsilon: dict[str, float] = field(default_factory=dict)
    dp_seed: int | None = None
    noise_multiplier: float | None = None
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        check_positive("sim.synth_scale", self.synth_scale)
        check_positive("sim.site_scale", self.site_scale)
        check(self.pretrain_steps >= 0, "sim.pretrain_steps", self.pretrain_steps, ">= 0 (0 = train preset)")
        check_positive("sim.num_cpus", self.num_cpus)
        check(len(set(self.sites)) == len(self.sites), "sim.sites", self.sites, "distinct site names")
        for site, eps in self.site_epsilon.items():
            check(eps > 0, f"sim.site_epsilon.{site}", eps, "> 0")
        if self.noise_multiplier is not None:
            check_positive("sim.noise_multiplier", self.noise_multiplier)
        if self.epsilon_budget is not None:
            check_positive("sim.epsilon_budget", self.epsilon_budget)


@dataclass
class SimulateConfig:
    """One composed ``medim-simulate`` run (``configs/simulate.yaml`` + overrides): the sim settings, the
    coordinator's settings, the run folder (``hydra.run.dir``) and which ``baseline`` to run."""

    sim: SimConfig
    fl: FLConfig
    out: Path
    baseline: str = "federated"
    resume: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        check_choice("baseline", self.baseline, BASELINES)
        check(
            not (self.resume and self.baseline == "compare"),
            "resume",
            self.resume,
            "false with baseline=compare (it re-uses finished parts by itself)",
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (for summaries)."""
        return {"sim": asdict(self.sim), "fl": asdict(self.fl), "baseline": self.baseline}


@dataclass
class _SimulateSchema:
    """The typed base of ``configs/simulate.yaml`` (``simulate_schema``): every key of every group exists, so
    plain overrides like ``fl.proximal_mu=0.1`` work and wrong types are rejected."""

    sim: SimConfig = field(default_factory=SimConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    dp: Any = None
    baseline: str = "federated"
    resume: bool = False
    quiet: bool = False


def _hydra_compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    ConfigStore.instance().store(name="simulate_schema", node=_SimulateSchema)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="simulate", overrides=overrides, return_hydra_config=True)
        run_dir = str(cfg.hydra.run.dir)
        dp_choice = cfg.hydra.runtime.choices.get("dp")
        body = {
            str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items()
            if k != "hydra"
        }
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"medim-simulate overrides {overrides}: {err}") from None
    body["out"] = run_dir
    body["dp"] = dp_choice
    return body


def compose_simulate(overrides: list[str] | None = None) -> SimulateConfig:
    """Compose ``configs/simulate.yaml`` with Hydra-style overrides, e.g. ``["sim=smoke", "fl.rounds=3",
    "dp=off", "hydra.run.dir=runs/x"]``, and validate; bad values raise ConfigError naming the setting.

    ``fl`` is the fl preset the sim preset names unless an override picks one (``fl=small``); ``dp`` (when set)
    replaces the sim preset's privacy preset.
    """
    overrides = list(overrides or [])
    for override in overrides:
        check(
            not re.match(r"^[+~]*dp\.", override),
            "dp",
            override,
            "a preset name (dp=off, dp=strict); per-site budgets: sim.site_epsilon",
        )
    raw = _hydra_compose(overrides)
    picked = [o.split("=", 1)[1] for o in overrides if re.match(r"^[+~]*fl=", o)]
    fl_choice = picked[-1] if picked else str(raw["sim"].get("fl", "small"))
    if not picked:
        raw = _hydra_compose([*overrides, f"fl={fl_choice}"])
    sim_raw = {**raw["sim"], "fl": fl_choice}
    if raw.get("dp") is not None:
        sim_raw["dp"] = str(raw["dp"])
    sim = build_config(SimConfig, sim_raw, where="sim")
    check_choice("dp", sim.dp, tuple(presets("dp")))
    fl = build_config(FLConfig, raw["fl"], where="fl")
    return build_config(
        SimulateConfig,
        {k: raw[k] for k in ("baseline", "resume", "quiet", "out")} | {"sim": asdict(sim), "fl": asdict(fl)},
        where="medim-simulate",
    )
