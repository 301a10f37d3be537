"""Non-federated baselines from the same code, data and evaluation as the federation (``medim-simulate
baseline=central|local``):

- ``central``: every joining site's training rows pooled at one place, no DP, trained with
  :func:`medim.train.train_local` on the LoRA'd base model on as many samples as the whole federation sees, two
  ways: ``central`` takes ``fl.rounds * fl.local_steps * sites`` steps of the sites' batch size (four times the
  federation's sequential depth with four sites), ``central-large-batch`` takes ``fl.rounds * fl.local_steps``
  steps of ``fl.batch_size * sites`` rows (the federation's depth: what a round-synchronous data-parallel run
  does); both with the sites' learning rate;
- ``local``: each site alone (no federation, no DP) for its own budget (``fl.rounds * fl.local_steps``).

Each trained model is evaluated by the coordinator's evaluator (:func:`server.evaluation.build_evaluator`) on
every held-out set, as the federation's last round (so with every generation metric). Output
``OUT/summary.json``::

    schema, kind ("central" | "local"), preset, strategy (= kind), config_hash, model_bytes, trainable_bytes,
    wall_seconds, config {sim, fl, baseline},
    models {name: {trained_on [site], steps, train_loss, seconds, eval {set: {loss, ..., metrics}}}}

and ``OUT/report.html``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.config import SiteConfig
from medim.config import DiffusionConfig, TrainConfig, load_preset
from medim.data.sequences import SequenceSet
from medim.model.lora import load_trainable_state, trainable_state
from medim.pipeline import Workspace, config_hash
from medim.report import Page, write_json_atomic
from medim.train import train_local
from server.evaluation import Evaluator, build_evaluator
from simulation.config import SimulateConfig
from simulation.run import prepare_workspace
from simulation.summary import eval_entry, finite, model_size


@dataclass
class BaselineModel:
    """One trained baseline model and its evaluation ({set: metrics})."""

    trained_on: list[str]
    steps: int
    train_loss: float
    seconds: float
    eval: dict[str, Any] = field(default_factory=dict)


def site_rows(ws: Workspace, evaluator: Evaluator, sites: list[str], site: SiteConfig) -> SequenceSet:
    """The training rows of ``sites`` (their modalities and splits per the site preset), pooled."""
    folders = [p for name in sites for p in ws.sites[name]]
    data = ws.sequences(folders, evaluator.model).select(splits=site.splits)
    if site.modalities:
        data = SequenceSet.concat([data.select(modality=m) for m in site.modalities], data.x0.shape[1])
    return data


def train_and_evaluate(
    evaluator: Evaluator,
    initial: dict[str, np.ndarray],
    data: SequenceSet,
    *,
    cfg: SimulateConfig,
    steps: int,
    batch_size: int,
    site: SiteConfig,
    trained_on: list[str],
) -> BaselineModel:
    """Train the trainable set from ``initial`` on ``data`` for ``steps`` steps of ``batch_size`` rows (no DP);
    evaluate it."""
    start = time.perf_counter()
    load_trainable_state(evaluator.model, {k: torch.from_numpy(v.copy()) for k, v in initial.items()})
    train = TrainConfig(
        steps=steps,
        batch_size=min(batch_size, int(data.x0.shape[0])),
        lr=cfg.fl.lr,
        warmup_steps=cfg.fl.warmup_steps,
        seed=cfg.fl.seed,
        autocast_bf16=site.autocast_bf16,
        log_every=max(1, steps // 4),
    )
    diffusion = load_preset(DiffusionConfig, "diffusion", site.diffusion)
    result = train_local(evaluator.model, data.x0, diffusion=diffusion, train=train, progress=not cfg.quiet)
    state = {k: v.numpy() for k, v in trainable_state(evaluator.model).items()}
    evaluation = evaluator(cfg.fl.rounds, state)
    return BaselineModel(
        trained_on=trained_on,
        steps=result.steps,
        train_loss=result.final_loss,
        seconds=round(time.perf_counter() - start, 2),
        eval=eval_entry(evaluation.to_json()) or {},
    )


def _run(cfg: SimulateConfig, kind: str) -> Path:
    start = time.perf_counter()
    out = cfg.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ws = prepare_workspace(cfg.sim, out, progress=not cfg.quiet)
    sites = cfg.sim.sites or sorted(ws.sites)
    site = load_preset(SiteConfig, "site", cfg.sim.site)
    diffusion = load_preset(DiffusionConfig, "diffusion", site.diffusion)
    evaluator = build_evaluator(ws, cfg.fl, diffusion)
    initial = {k: v.numpy().copy() for k, v in trainable_state(evaluator.model).items()}
    depth, batch, n = cfg.fl.rounds * cfg.fl.local_steps, cfg.fl.batch_size, len(sites)
    plans = (
        {"central": (sites, depth * n, batch), "central-large-batch": (sites, depth, batch * n)}
        if kind == "central"
        else {name: ([name], depth, batch) for name in sites}
    )
    models: dict[str, BaselineModel] = {}
    for name, (members, steps, rows) in plans.items():
        data = site_rows(ws, evaluator, members, site)
        models[name] = train_and_evaluate(
            evaluator, initial, data, cfg=cfg, steps=steps, batch_size=rows, site=site, trained_on=members
        )
        if not cfg.quiet:
            losses = " ".join(f"{m}={v['loss']:.4f}" for m, v in models[name].eval.items())
            print(f"{kind} {name}: {steps} steps x {rows} rows  eval {losses}", flush=True)
    sizes = model_size(ws.root, initial)
    summary = finite(
        {
            "schema": 2,
            "kind": kind,
            "preset": cfg.sim.preset,
            "strategy": kind,
            "config_hash": config_hash(cfg.describe() | {"sites": sites}),
            **asdict(sizes),
            "wall_seconds": round(time.perf_counter() - start, 2),
            "config": cfg.describe(),
            "models": {name: asdict(m) for name, m in models.items()},
        }
    )
    write_json_atomic(out / "summary.json", summary)
    render_baseline(summary, out / "report.html")
    return out / "summary.json"


def render_baseline(summary: dict[str, Any], path: Path) -> None:
    """Final evaluation of each baseline model on every held-out set."""
    page = Page(f"medim {summary['kind']} baseline ({summary['preset']})")
    for name, model in summary["models"].items():
        keys = sorted({k for v in model["eval"].values() for k in v})
        page.table(
            f"{name}: trained on {', '.join(model['trained_on'])} for {model['steps']} steps",
            [[m, *[v.get(k) for k in keys]] for m, v in model["eval"].items()],
            ["set", *keys],
        )
    page.write(path)


def run_central(cfg: SimulateConfig) -> Path:
    """The centralised baseline into ``cfg.out``; returns the summary path."""
    return _run(cfg, "central")


def run_local(cfg: SimulateConfig) -> Path:
    """The local-only baselines (one model per site) into ``cfg.out``; returns the summary path."""
    return _run(cfg, "local")
