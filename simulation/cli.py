"""``medim-simulate``: run the federation (or a baseline, or all four compared) on one machine and write
summary.json + report.html.

Hydra-style overrides of ``configs/simulate.yaml``::

    medim-simulate sim=smoke hydra.run.dir=runs/smoke        # quick check: tiny model, 2 sites, 2 rounds
    medim-simulate fl.rounds=3 dp=off fl.strategy=fedprox     # the small demo with other settings
    medim-simulate baseline=central                           # central | local | federated (default)
    medim-simulate compare hydra.run.dir=runs/compare         # all four baselines and a table

The flags of earlier versions map onto overrides: ``--preset`` (sim=), ``--out`` (hydra.run.dir=),
``--rounds`` (fl.rounds=), ``--strategy`` (fl.strategy=), ``--dp`` (dp=), ``--sites`` (sim.sites=),
``--workspace`` (sim.workspace=), ``--resume``, ``--quiet``; ``--faults`` adds a fault plan (configs/faults/).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from medim.config import ConfigError, build_config
from server.config import FLConfig
from simulation.config import SimulateConfig, compose_simulate
from simulation.faults import FaultPlan, load_fault_plan
from simulation.run import SimRequest, simulate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="medim-simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides", nargs="*", help="'compare' and/or overrides such as sim=smoke fl.rounds=3"
    )
    parser.add_argument("--preset", default=None, help="sim preset (configs/sim/): = sim=NAME")
    parser.add_argument("--out", type=Path, default=None, help="run folder: = hydra.run.dir=DIR")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds: = fl.rounds=N")
    parser.add_argument("--sites", nargs="+", default=None, help="sites that join: = sim.sites=[a,b]")
    parser.add_argument("--strategy", default=None, help="= fl.strategy=NAME (fedavg, fedprox, fedadam, ...)")
    parser.add_argument("--dp", default=None, help="privacy preset for every site (configs/dp/): = dp=NAME")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="shared workspace cache: = sim.workspace="
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    parser.add_argument(
        "--faults", default=None, help="fault plan (configs/faults/): crashes, stalls, bad updates"
    )
    parser.add_argument(
        "--privacy-report",
        action="store_true",
        help="after the run, measure membership inference, gradient leakage and memorisation (privacy_evidence)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def to_overrides(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides equivalent to the flags, followed by the positional overrides."""
    flags = [
        ("sim", args.preset),
        ("hydra.run.dir", args.out),
        ("fl.rounds", args.rounds),
        ("fl.strategy", args.strategy),
        ("dp", args.dp),
        ("sim.workspace", args.workspace),
        ("sim.sites", f"[{','.join(args.sites)}]" if args.sites else None),
    ]
    out = [f"{key}={value}" for key, value in flags if value is not None]
    out += ["resume=true"] * args.resume + ["quiet=true"] * args.quiet
    positional = list(args.overrides)
    if positional[:1] == ["compare"]:
        positional = ["baseline=compare", *positional[1:]]
    return out + positional


def with_faults(cfg: SimulateConfig, plan: FaultPlan, *, sites_given: bool) -> SimulateConfig:
    """The fault plan's sites (unless sites were given) and coordinator overrides applied to ``cfg``."""
    sim = cfg.sim if sites_given or not plan.sites else replace(cfg.sim, sites=list(plan.sites))
    fl = build_config(FLConfig, {**asdict(cfg.fl), **plan.fl}, where="faults.fl")
    return replace(cfg, sim=sim, fl=fl)


def run(cfg: SimulateConfig, *, faults: FaultPlan | None = None, privacy_report: bool = False) -> Path:
    """Run what ``cfg.baseline`` names; returns the path of its summary (compare: its table, compare.json)."""
    from simulation.baselines import run_central, run_local
    from simulation.compare import run_compare

    if cfg.baseline == "central":
        return run_central(cfg)
    if cfg.baseline == "local":
        return run_local(cfg)
    if cfg.baseline == "compare":
        return run_compare(cfg)
    request = SimRequest(
        sim=cfg.sim,
        out=cfg.out,
        resume=cfg.resume,
        progress=not cfg.quiet,
        fl_overrides=asdict(cfg.fl),
        faults=faults,
        privacy_report=privacy_report,
    )
    return simulate(request)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = to_overrides(args)
        cfg = compose_simulate(overrides)
        plan = load_fault_plan(args.faults) if args.faults else None
        if plan is not None:
            sites_given = any(o.startswith("sim.sites=") for o in overrides)
            cfg = with_faults(cfg, plan, sites_given=sites_given)
        start = time.perf_counter()
        result = run(cfg, faults=plan, privacy_report=args.privacy_report)
    except (ConfigError, FileExistsError) as err:
        print(f"medim-simulate: {err}", file=sys.stderr)
        return 2
    print(
        f"medim-simulate: wrote {result} and {result.parent / 'report.html'}  ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
