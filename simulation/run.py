"""``simulate``: bootstrap the workspace, write each site's own config file, run the federation with Flower's
simulation engine in this process (the same ServerApp and ClientApp as a deployment), then write the summary.

Layout of the output folder::

    OUT/workspace/            the bootstrapped workspace (unless sim.workspace points at a shared cache)
    OUT/sites/<site>/site.yaml  each site's own config; OUT/sites/<site>/state/ its privacy ledger
    OUT/checkpoints/          per-round coordinator checkpoints (server.checkpoint)
    OUT/audit.jsonl           hash-chained audit log (server.audit)
    OUT/summary.json, OUT/report.html
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from client.app import make_client_app
from client.config import SiteConfig, save_site_config
from medim.config import ConfigError, TrainConfig, load_preset
from medim.pipeline import Workspace, bootstrap
from medim.privacy import PrivacyConfig
from server.app import ServerPlan, make_server_app
from server.evaluation import EvalHook
from simulation.config import SimConfig
from simulation.faults import FaultPlan, faulty_client_app
from simulation.privacy_report import add_privacy_evidence, privacy_evidence
from simulation.summary import write_outputs


@dataclass
class SimRequest:
    """One ``medim-simulate`` invocation: the sim config, the output folder and command-line overrides."""

    sim: SimConfig
    out: Path
    rounds: int | None = None
    resume: bool = False
    progress: bool = True
    fl_overrides: dict[str, Any] = field(default_factory=dict)
    faults: FaultPlan | None = None
    privacy_report: bool = False


def prepare_workspace(sim: SimConfig, out: Path, *, progress: bool) -> Workspace:
    """Bootstrap (or re-use) the workspace at ``sim.workspace`` or ``out/workspace``."""
    root = Path(sim.workspace) if sim.workspace else out / "workspace"
    pretrain = None
    if sim.pretrain_steps:
        preset = load_preset(TrainConfig, "train", sim.preset)
        pretrain = replace(
            preset, steps=sim.pretrain_steps, warmup_steps=min(preset.warmup_steps, sim.pretrain_steps)
        )
    return bootstrap(
        root,
        preset=sim.preset,
        tokenizer_preset=sim.tokenizer or None,
        seed=sim.seed,
        synth_scale=sim.synth_scale,
        site_scale=sim.site_scale,
        pretrain=pretrain,
        progress=progress,
    )


def write_site_configs(
    sim: SimConfig, ws: Workspace, out: Path, sites: Sequence[str]
) -> dict[str, SiteConfig]:
    """Each site's own file ``out/sites/<site>/site.yaml`` from the site preset and the workspace paths."""
    configs = {}
    preset = load_preset(SiteConfig, "site", sim.site)
    privacy = load_preset(PrivacyConfig, "dp", sim.dp)
    if sim.dp_seed is not None:
        privacy = replace(privacy, seed=sim.dp_seed)
    if sim.noise_multiplier is not None:
        privacy = replace(privacy, noise_multiplier=sim.noise_multiplier)
    if sim.epsilon_budget is not None:
        privacy = replace(privacy, epsilon_budget=sim.epsilon_budget)
    for name in sites:
        budget = sim.site_epsilon.get(name, privacy.epsilon_budget)
        cfg = replace(
            preset,
            name=name,
            privacy=replace(privacy, epsilon_budget=budget),
            data=[str(p) for p in ws.sites[name]],
            base_model=str(ws.base_model),
            tokenizer=str(ws.tokenizer),
            state_dir=str(out / "sites" / name / "state"),
        )
        save_site_config(cfg, out / "sites" / name / "site.yaml")
        configs[name] = cfg
    return configs


def simulate(request: SimRequest, *, hooks: Sequence[EvalHook] = ()) -> Path:
    """Run the simulation described by ``request``; returns the path of ``summary.json``."""
    start = time.perf_counter()
    sim, out = request.sim, request.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ws = prepare_workspace(sim, out, progress=request.progress)
    sites = sim.sites or sorted(ws.sites)
    unknown = sorted(set(sites) - set(ws.sites))
    unknown += sorted(set(sim.site_epsilon) - set(sites))
    if unknown:
        raise ConfigError(f"sim.sites: {unknown} not in the workspace (available {sorted(ws.sites)})")
    site_configs = write_site_configs(sim, ws, out, sites)
    overrides = dict(request.fl_overrides)
    if request.rounds is not None:
        overrides["rounds"] = request.rounds
    run_config: dict[str, str | int | float | bool] = {
        "out": str(out),
        "workspace": str(ws.root.resolve()),
        "sites": ",".join(sites),
        "sites-dir": str(out / "sites"),
        "fl-preset": sim.fl,
        "fl-overrides": json.dumps(overrides),
        "resume": request.resume,
        "progress": request.progress,
    }
    plan = ServerPlan.from_run_config(run_config)
    backend = {
        # Ray options of the sites' actors: a worker that dies (the OOM killer, a crash in native code) is
        # restarted and the message it was running is tried once more on the fresh worker (a second death fails
        # it: Flower error reply, audited). Without restarts Flower puts the dead actor back into its pool and
        # every later message handed to it fails too.
        "client_resources": {
            "num_cpus": sim.num_cpus,
            "num_gpus": 0.0,
            "max_restarts": -1,
            "max_task_retries": 1,
        },
        "init_args": {
            "logging_level": "ERROR",
            "log_to_driver": request.progress,
            # Ray starts its workers -- the sites' actors -- at nice 15 by default, below the coordinator and
            # every other process; the sites' rounds are the simulation's work, so they run at the coordinator's
            # priority (no difference on an idle machine; a busy shared one no longer starves them)
            "_system_config": {"worker_niceness": 0},
        },
    }
    logging.getLogger("flwr").setLevel(logging.INFO if request.progress else logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        run_simulation(
            server_app=make_server_app(run_config, hooks=hooks),
            client_app=make_client_app(run_config)
            if request.faults is None
            else faulty_client_app(request.faults, run_config),
            num_supernodes=len(sites),
            backend_config=backend,  # type: ignore[arg-type]
        )
    summary = write_outputs(
        out, sim=sim, plan=plan, sites=site_configs, wall_seconds=time.perf_counter() - start
    )
    if request.privacy_report:
        add_privacy_evidence(summary, privacy_evidence(out, ws, site_configs[sites[0]]))
    return summary
