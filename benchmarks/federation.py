"""Federation overhead and site scaling: a Flower simulation (Ray, the same apps as a deployment) against the
same work done alone, side by side in one process.

Each row runs one simulation of ``rounds`` rounds with generation metrics off (``fl.generation.every=0``) and
every site's privacy budget raised so that no round is refused (DP-SGD stays on; the default budget of the tiny
sites is spent after one round, and a refused round does no work). The first round (Ray actors start, imports)
is not measured: for each later round ``k`` the numerator is the coordinator's round *period*, the audit log's
``round_start`` of ``k`` to the next ``round_start`` (or ``finish``), which holds the train messages, every
site's round, validation, aggregation, the global loss evaluation, the checkpoint and the audit entries.

The denominator is the same work measured alone in this process, warm (one unmeasured call first), before and
after the simulation (their mean; both reported): each site's :func:`client.train.run_site_round` for round
``k`` (fresh ledger, the same budget) plus the coordinator's loss evaluation (:func:`server.evaluation.
build_evaluator` with generation off). ``overhead`` is the median over the measured rounds of
period / (sum of sites alone + evaluation alone).

``mode`` "serial" runs the sites one after another in one Ray actor (``sim.num_cpus`` = the machine's cores), so
the ratio is the federation's own cost: scheduling, message (de)serialisation, validation, checkpointing, audit.
``mode`` "parallel" is the default simulation (one CPU per site, sites overlap when cores are free): below 1
means the simulation overlapped sites. Each measured round's ``parts`` split the period (``send_receive``:
train messages out until every reply is in; validate, aggregate, eval, ``checkpoint_and_audit``, ``other``);
``sites_in_simulation_seconds`` sums the sites' rounds as timed inside the actors and, in serial mode,
``scheduling_and_messages_seconds`` is the rest of ``send_receive``. ``site_slowdown_in_simulation`` is the sites'
in-actor seconds over their alone seconds. ``peak_memory_gb`` is the peak over the run of the summed RSS (upper bound,
shared pages counted per process) and PSS (shared pages split) of this process and all its descendants (Ray's
processes and actors included), sampled every 0.25 s.

More sites than the workspace has (8 on the 4 synthetic hospitals) are *replicas*: :func:`replicated_workspace`
links a workspace whose ``<site>-r<k>`` sites are copies of the originals' data (their own names, seeds and
ledgers, the same amount of work), so nothing in the production path changes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from safetensors.numpy import load_file

from client.config import SiteConfig, load_site_config
from client.protocol import TrainInstructions
from client.train import run_site_round
from medim.config import DiffusionConfig, load_preset
from medim.model.lora import trainable_state
from medim.pipeline import SYNTH_FILE, Workspace
from server.checkpoint import latest_path
from server.config import FLConfig
from server.evaluation import Evaluator, build_evaluator
from simulation.config import SimConfig
from simulation.run import SimRequest, prepare_workspace, simulate, write_site_configs

SITE_BUDGET = 1e6
NO_GENERATION = {"generation": {"every": 0}}


class TreeMemory:
    """Peak summed RSS and PSS (bytes) of this process and its descendants, sampled by a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak_rss, self.peak_pss, self.peak_processes = interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        rss = pss = count = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss, pss, count = rss + info.rss, pss + info.pss, count + 1
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, count)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def replica_name(site: str, k: int) -> str:
    return site if k == 0 else f"{site}-r{k}"


def replicated_workspace(ws: Workspace, count: int, root: Path) -> tuple[Path, list[str]]:
    """A workspace at ``root`` with ``count`` sites: the originals (sorted), then replicas ``<site>-r1``, ...

    Everything is a link to ``ws`` (synthetic data, prepared folders, tokenizer, base model), so bootstrap
    re-uses every step; a replica's prepared folder links to its original's. Returns (root, site names).
    """
    originals = sorted(ws.sites)
    names = [replica_name(originals[i % len(originals)], i // len(originals)) for i in range(count)]
    if count <= len(originals):
        return ws.root.resolve(), names
    src = ws.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    (root / "synth" / "sites").mkdir(parents=True)
    (root / "prepared").mkdir()
    shutil.copy(src / SYNTH_FILE, root / SYNTH_FILE)
    for entry in ("sites.json", "heldout", "public"):
        (root / "synth" / entry).symlink_to(src / "synth" / entry)
    for entry in ("heldout", "public"):
        (root / "prepared" / entry).symlink_to(src / "prepared" / entry)
    for entry in (ws.tokenizer.name, ws.base_model.name):
        (root / entry).symlink_to(src / entry)
    for i, name in enumerate(names):
        original = originals[i % len(originals)]
        (root / "synth" / "sites" / name).symlink_to(src / "synth" / "sites" / original)
        (root / "prepared" / name).symlink_to(src / "prepared" / original)
    return root, names


def _audit_periods(out: Path) -> dict[int, float]:
    """Round -> seconds from its ``round_start`` to the next ``round_start`` (or ``finish``)."""
    entries = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    marks = [(e.get("round"), e["time"]) for e in entries if e["event"] in ("round_start", "finish")]
    return {int(r): t1 - t0 for (r, t0), (_, t1) in zip(marks, marks[1:], strict=False) if isinstance(r, int)}


def _alone(
    configs: dict[str, SiteConfig],
    evaluator: Evaluator,
    fl: FLConfig,
    state: dict[str, np.ndarray],
    server_round: int,
    scratch: Path,
) -> dict[str, Any]:
    """Each site's round and the loss evaluation, one after another in this process (warm, fresh ledgers)."""
    torch_state = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    instructions = TrainInstructions(
        server_round=server_round,
        local_steps=fl.local_steps,
        lr=fl.lr,
        batch_size=fl.batch_size,
        warmup_steps=fl.warmup_steps,
        seed=fl.seed,
    )
    sites = {}
    for name, cfg in configs.items():
        fresh = replace(cfg, state_dir=tempfile.mkdtemp(dir=scratch))
        start = time.perf_counter()
        result = run_site_round(fresh, instructions, torch_state)
        sites[name] = time.perf_counter() - start
        if result.state is None:
            raise RuntimeError(f"{name} refused its round alone: {result.reason}")
    start = time.perf_counter()
    evaluator(server_round, state)
    return {"sites": sites, "eval": time.perf_counter() - start}


def _row(
    sim: SimConfig,
    ws: Workspace,
    *,
    count: int,
    mode: str,
    rounds: int,
    fl: FLConfig,
    evaluator: Evaluator,
    scratch: Path,
) -> dict[str, Any]:
    root, names = replicated_workspace(ws, count, scratch / f"ws-{count}")
    cores = os.cpu_count() or 1
    run_sim = replace(
        sim,
        workspace=str(root),
        sites=names,
        site_epsilon=dict.fromkeys(names, SITE_BUDGET),
        num_cpus=float(cores) if mode == "serial" else 1.0,
    )
    out = scratch / f"run-{count}-{mode}"
    # the site files the simulation writes, written first so that the alone runs read the same
    write_site_configs(run_sim, prepare_workspace(run_sim, root, progress=False), out, names)
    configs = {name: load_site_config(out / "sites" / name / "site.yaml") for name in names}
    state = {k: v.numpy() for k, v in trainable_state(evaluator.model).items()}
    measured_round = 2 if rounds > 1 else 1
    _alone(dict(list(configs.items())[:1]), evaluator, fl, state, measured_round, scratch)  # warm-up
    before = _alone(configs, evaluator, fl, state, measured_round, scratch)
    start = time.perf_counter()
    with TreeMemory() as memory:
        summary_path = simulate(
            SimRequest(sim=run_sim, out=out, rounds=rounds, progress=False, fl_overrides=dict(NO_GENERATION))
        )
    wall = time.perf_counter() - start
    checkpoint = latest_path(out / "checkpoints")
    assert checkpoint is not None
    final = load_file(str(checkpoint / "trainable.safetensors"))
    after = _alone(configs, evaluator, fl, final, measured_round, scratch)
    summary = json.loads(summary_path.read_text())
    periods = _audit_periods(out)
    alone_sites = {s: (before["sites"][s] + after["sites"][s]) / 2 for s in names}
    eval_alone = (before["eval"] + after["eval"]) / 2
    denominator = sum(alone_sites.values()) + eval_alone
    measured = []
    for record in summary["rounds"][1:]:
        k = record["round"]
        if k < 2 and rounds > 1:
            continue
        statuses = {s: v["status"] for s, v in record["sites"].items()}
        if set(statuses.values()) != {"accepted"}:
            raise RuntimeError(f"round {k}: not every site trained ({statuses}); the ratio would be void")
        in_sim = {s: float(v["metrics"]["seconds"]) for s, v in record["sites"].items()}
        phases = record["phases"]
        parts = {
            "send_receive": phases["send_receive"],
            "validate": phases["validate"],
            "aggregate": phases["aggregate"],
            "eval": phases.get("eval", 0.0),
            "checkpoint_and_audit": periods[k] - record["seconds"],
        }
        parts["other"] = periods[k] - sum(parts.values())
        measured.append(
            {
                "round": k,
                "period_seconds": periods[k],
                "overhead": periods[k] / denominator,
                "parts": parts,
                "sites_in_simulation_seconds": sum(in_sim.values()),
                # sites one after another: the rest of the train-message phase is scheduling and messages
                "scheduling_and_messages_seconds": phases["send_receive"] - sum(in_sim.values())
                if mode == "serial"
                else None,
                "site_seconds_in_simulation": in_sim,
            }
        )
    return {
        "sites": count,
        "mode": mode,
        "actors": max(1, int(cores // run_sim.num_cpus)),
        "site_names": names,
        "rounds": rounds,
        "measured_rounds": [m["round"] for m in measured],
        "seconds_per_round": statistics.median(m["period_seconds"] for m in measured),
        "overhead": statistics.median(m["overhead"] for m in measured),
        "denominator_seconds": denominator,
        "sites_alone_seconds": alone_sites,
        "eval_alone_seconds": eval_alone,
        "alone_before": before,
        "alone_after": after,
        "per_round": measured,
        "site_slowdown_in_simulation": statistics.median(
            m["sites_in_simulation_seconds"] / sum(alone_sites.values()) for m in measured
        ),
        "simulation_wall_seconds": wall,
        "peak_memory_gb": {
            "rss_sum": memory.peak_rss / 2**30,
            "pss_sum": memory.peak_pss / 2**30,
            "processes": memory.peak_processes,
        },
    }


def federation_overhead(
    preset: str, *, runs: tuple[tuple[str, int], ...], rounds: int, workspace: Path
) -> dict[str, Any]:
    """One row per (mode, site count) in ``runs``; ``overhead`` is the first serial row's (else the first
    row's), ``overhead_parallel`` the first parallel row's, ``scaling`` the rows' seconds per round and memory."""
    torch.set_num_threads(1)
    sim = load_preset(SimConfig, "sim", preset, workspace=str(workspace))
    ws = prepare_workspace(sim, workspace, progress=False)
    fl = load_preset(FLConfig, "fl", sim.fl, **NO_GENERATION)
    diffusion = load_preset(DiffusionConfig, "diffusion", "default")
    evaluator = build_evaluator(ws, fl, diffusion)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            _row(
                sim, ws, count=count, mode=mode, rounds=rounds, fl=fl, evaluator=evaluator, scratch=Path(tmp)
            )
            for mode, count in runs
        ]
    serial = [r for r in rows if r["mode"] == "serial"] or rows
    parallel = [r for r in rows if r["mode"] == "parallel"]
    return {
        "preset": preset,
        "fl": sim.fl,
        "load_average": list(os.getloadavg()),
        "rows": rows,
        "overhead": serial[0]["overhead"] if serial else None,
        "overhead_parallel": parallel[0]["overhead"] if parallel else None,
        "scaling": [
            {
                "sites": r["sites"],
                "mode": r["mode"],
                "seconds_per_round": r["seconds_per_round"],
                "peak_rss_gb": r["peak_memory_gb"]["rss_sum"],
                "peak_pss_gb": r["peak_memory_gb"]["pss_sum"],
            }
            for r in rows
        ],
    }
