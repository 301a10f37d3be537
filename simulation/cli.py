"""``medim-simulate``: run the federation on one machine and write summary.json + report.html."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medim.config import ConfigError, load_preset
from simulation.config import SimConfig
from simulation.faults import load_fault_plan
from simulation.run import SimRequest, simulate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medim-simulate", description=__doc__)
    parser.add_argument("--preset", default="small", help="sim preset (configs/sim/): tiny or small")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/sim-<preset>)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="number of rounds (default: the fl preset's)"
    )
    parser.add_argument(
        "--sites", nargs="+", default=None, help="sites that join (default: the sim preset's)"
    )
    parser.add_argument(
        "--strategy", default=None, help="fedavg, fedprox, fedadam, fedtrimmedavg, fedmedian, krum"
    )
    parser.add_argument(
        "--dp", default=None, help="privacy preset for every site (configs/dp/): default, off, strict"
    )
    parser.add_argument(
        "--workspace", type=Path, default=None, help="shared workspace cache (default OUT/workspace)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--faults",
        default=None,
        help="fault plan (configs/faults/): sites that crash, stall or send bad updates",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, object] = {}
    if args.dp is not None:
        overrides["dp"] = args.dp
    if args.workspace is not None:
        overrides["workspace"] = str(args.workspace)
    try:
        plan = load_fault_plan(args.faults) if args.faults else None
        sites = args.sites if args.sites is not None else (plan.sites if plan is not None else [])
        if sites:
            overrides["sites"] = sites
        sim = load_preset(SimConfig, "sim", args.preset, **overrides)
        fl_overrides = dict(plan.fl) if plan is not None else {}
        if args.strategy:
            fl_overrides["strategy"] = args.strategy
        out = args.out or Path("runs") / f"sim-{args.preset}"
        request = SimRequest(
            sim=sim,
            out=out,
            rounds=args.rounds,
            resume=args.resume,
            progress=not args.quiet,
            fl_overrides=fl_overrides,
            faults=plan,
        )
        start = time.perf_counter()
        summary = simulate(request)
    except (ConfigError, FileExistsError) as err:
        print(f"medim-simulate: {err}", file=sys.stderr)
        return 2
    print(
        f"summary: {summary}  report: {summary.with_name('report.html')}  ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
