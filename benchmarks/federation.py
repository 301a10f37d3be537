"""Federation overhead and site scaling: a Flower simulation (Ray, the same apps as a deployment) against the
same work done alone.

For each site count the simulation runs ``rounds`` rounds; the last round's wall time (server clock: train
messages, replies, validation, aggregation and the global evaluation) is compared with the sum of that round's
site rounds run one after another in this process (:func:`client.train.run_site_round`, fresh ledgers) plus the
global evaluation run alone. Below 1 means the simulation overlapped sites (one CPU each).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from client.config import load_site_config
from client.protocol import TrainInstructions
from client.train import run_site_round
from medim.config import DiffusionConfig, load_preset
from medim.model.lora import trainable_state
from server.config import FLConfig
from server.evaluation import build_evaluator
from simulation.config import SimConfig
from simulation.run import SimRequest, prepare_workspace, simulate


def federation_overhead(
    preset: str, *, site_counts: tuple[int, ...], rounds: int, workspace: Path
) -> dict[str, Any]:
    sim = load_preset(SimConfig, "sim", preset, workspace=str(workspace))
    ws = prepare_workspace(sim, workspace, progress=False)
    fl = load_preset(FLConfig, "fl", sim.fl)
    diffusion = load_preset(DiffusionConfig, "diffusion", "default")
    rows = []
    for count in site_counts:
        sites = sorted(ws.sites)[:count]
        if len(sites) < count:
            rows.append({"sites": count, "skipped": f"the workspace has {len(ws.sites)} sites"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            start = time.perf_counter()
            summary_path = simulate(
                SimRequest(sim=replace(sim, sites=sites), out=out, rounds=rounds, progress=False)
            )
            wall = time.perf_counter() - start
            summary = json.loads(summary_path.read_text())
            last = summary["rounds"][-1]
            evaluator = build_evaluator(ws, fl, diffusion)
            state = trainable_state(evaluator.model)
            alone = {}
            for site in sites:
                cfg = load_site_config(out / "sites" / site / "site.yaml")
                cfg = replace(cfg, state_dir=str(Path(tmp) / "alone" / site))
                instructions = TrainInstructions(
                    server_round=rounds,
                    local_steps=fl.local_steps,
                    lr=fl.lr,
                    batch_size=fl.batch_size,
                    warmup_steps=fl.warmup_steps,
                    seed=fl.seed,
                )
                t0 = time.perf_counter()
                run_site_round(cfg, instructions, state)
                alone[site] = time.perf_counter() - t0
            t0 = time.perf_counter()
            evaluator(rounds, {k: v.numpy() for k, v in state.items()})
            eval_alone = time.perf_counter() - t0
        denominator = sum(alone.values()) + eval_alone
        rows.append(
            {
                "sites": count,
                "round_seconds": float(last["seconds"]),
                "sites_alone_seconds": alone,
                "eval_alone_seconds": eval_alone,
                "overhead": float(last["seconds"]) / denominator,
                "simulation_wall_seconds": wall,
                "rounds": rounds,
                "site_reported_seconds": {
                    s: float(np.nan_to_num(v.get("metrics", {}).get("seconds", np.nan)))
                    for s, v in last.get("sites", {}).items()
                },
            }
        )
    measured = [r for r in rows if "overhead" in r]
    return {"preset": preset, "rows": rows, "overhead": measured[0]["overhead"] if measured else None}
