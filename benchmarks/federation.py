"""Federation overhead and site scaling: a Flower simulation (Ray, the same apps as a deployment) against the
same work done alone, interleaved with its rounds.

Each row runs one simulation of ``rounds`` rounds with generation metrics off (``fl.generation.every=0``) and
every site's privacy budget raised so that no round is refused (DP-SGD stays on; the default budget of the tiny
sites is spent after one round, and a refused round does no work). The first round (Ray actors start, imports)
is not measured: for each later round ``k`` the numerator is the coordinator's round *period*, the audit log's
``round_start`` of ``k`` to the next ``round_start`` (or ``finish``), which holds the train messages, every
site's round, validation, aggregation, the global loss evaluation, the checkpoint and the audit entries.

The denominator is the same work alone, measured by :class:`AloneProbe`, an evaluation hook of the coordinator:
after every evaluation (the initial one is the warm-up) the simulation waits while a separate warm process (one
thread) runs each site's :func:`client.train.run_site_round` from the current global state, one after another,
each on a copy of the site's privacy ledger as it stands (epsilon is recomputed over the whole history, so a
fresh ledger would do less accounting than the site's next round), then the coordinator's loss evaluation
(:func:`server.evaluation.build_evaluator`, generation off). Round ``k`` is compared with the mean of the probes
just before and just after it, so a change of the machine's load between rounds hits both sides; the probe's
time is taken out of the period. ``overhead`` is the median over the measured rounds of period / (sum of sites alone + evaluation
alone).

``mode`` "serial" runs the sites one after another in one Ray actor (``sim.num_cpus`` = the machine's cores), so
the ratio is the federation's own cost: scheduling, message (de)serialisation, validation, checkpointing, audit.
``mode`` "parallel" is the default simulation (one CPU per site, sites overlap when cores are free): below 1
means the simulation overlapped sites, above 1 on a loaded machine that the parallel actors got less CPU each.
Each measured round's ``parts`` split the period (``send_receive``: train messages out until every reply is in;
validate, aggregate, eval, ``checkpoint_and_audit``, ``other``); ``sites_in_simulation_seconds`` sums the sites'
rounds as timed inside the actors and, in serial mode, ``scheduling_and_messages_seconds`` is the rest of
``send_receive``; ``site_slowdown_in_simulation`` is the sites' in-actor seconds over their alone seconds.
``peak_memory_gb`` is the peak over the run of the summed RSS (upper bound: shared pages counted per process) and
PSS (shared pages split) of this process and all its descendants (Ray's processes and actors included; the
probe's process left out), sampled every 0.25 s.

More sites than the workspace has (8 on the 4 synthetic hospitals) are *replicas*: :func:`replicated_workspace`
links a workspace whose ``<site>-r<k>`` sites are copies of the originals' data (their own names, seeds and
ledgers, the same amount of work), so nothing in the production path changes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
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

from client.config import SiteConfig, load_site_config
from client.train import run_site_round
from medim.config import DiffusionConfig, load_preset
from medim.model.lora import trainable_state
from medim.pipeline import SYNTH_FILE, Workspace
from server.config import FLConfig
from server.evaluation import Evaluator, build_evaluator
from server.loop import round_instructions
from simulation.config import SimConfig
from simulation.run import SimRequest, prepare_workspace, simulate, write_site_configs

SITE_BUDGET = 1e6
NO_GENERATION = {"generation": {"every": 0}}


class TreeMemory:
    """Peak summed RSS and PSS (bytes) of this process and its descendants, sampled by a thread; the process
    ``exclude`` (and its descendants) are left out."""

    def __init__(self, interval: float = 0.25, exclude: int | None = None) -> None:
        self.interval, self.peak_rss, self.peak_pss, self.peak_processes = interval, 0, 0, 0
        self.exclude = exclude
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        skip: set[int] = set()
        if self.exclude is not None:
            try:
                skip = {self.exclude, *(c.pid for c in psutil.Process(self.exclude).children(recursive=True))}
            except psutil.NoSuchProcess:
                skip = {self.exclude}
        rss = pss = count = 0
        for proc in [root, *root.children(recursive=True)]:
            if proc.pid in skip:
                continue
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
    """Each site's round and the loss evaluation, one after another in this process (warm), every site on a copy
    of its ledger as it stands (epsilon is recomputed over the whole history: a fresh ledger would do less)."""
    torch_state = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    instructions = round_instructions(fl, server_round)
    sites = {}
    for name, cfg in configs.items():
        fresh = replace(cfg, state_dir=tempfile.mkdtemp(dir=scratch))
        if cfg.ledger_path.is_file():
            shutil.copy(cfg.ledger_path, fresh.ledger_path)
        start = time.perf_counter()
        result = run_site_round(fresh, instructions, torch_state)
        sites[name] = time.perf_counter() - start
        if result.state is None:
            raise RuntimeError(f"{name} refused its round alone: {result.reason}")
    start = time.perf_counter()
    evaluator(server_round, state)
    return {"sites": sites, "eval": time.perf_counter() - start}


def _alone_worker(conn: Any, workspace: str, fl_preset: str, scratch: str) -> None:
    """The alone measurements' process: builds the coordinator's evaluator once, then answers requests
    ``(site files, global state, round)`` with :func:`_alone`'s timings until it receives None."""
    torch.set_num_threads(1)
    fl = load_preset(FLConfig, "fl", fl_preset, **NO_GENERATION)
    diffusion = load_preset(DiffusionConfig, "diffusion", "default")
    evaluator = build_evaluator(Workspace.load(Path(workspace)), fl, diffusion)
    while (request := conn.recv()) is not None:
        files, state, server_round = request
        configs = {name: load_site_config(Path(path)) for name, path in files.items()}
        conn.send(_alone(configs, evaluator, fl, state, server_round, Path(scratch)))


class AloneProbe:
    """An evaluation hook of the coordinator: after each round's evaluation (and the initial one, a warm-up), the
    same work alone -- every site's round from the current global state, one after another (ledger copies),
    then the loss evaluation -- in a separate warm process (one thread, left out of the memory figures) while
    the simulation waits. Round ``k`` is compared with the probes just before and after it; the probe's own
    time is taken out of the round's period."""

    def __init__(self, files: dict[str, Path], *, workspace: Path, fl_preset: str, scratch: Path) -> None:
        self.files = {name: str(path) for name, path in files.items()}
        self.rounds: dict[int, dict[str, Any]] = {}
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_alone_worker, args=(child, str(workspace), fl_preset, str(scratch)), daemon=True
        )
        self.process.start()

    def __call__(self, model: Any, server_round: int) -> dict[str, float]:
        start = time.perf_counter()
        state = {k: v.detach().numpy().copy() for k, v in trainable_state(model).items()}
        self._conn.send((self.files, state, max(server_round, 1)))
        alone = self._conn.recv()
        self.rounds[server_round] = {**alone, "probe_seconds": time.perf_counter() - start}
        return {}

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the process is gone already
            self._conn.send(None)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()


def _row(
    sim: SimConfig,
    ws: Workspace,
    *,
    count: int,
    mode: str,
    rounds: int,
    scratch: Path,
    probe: bool = True,
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
    files = {name: out / "sites" / name / "site.yaml" for name in names}
    alone = (
        AloneProbe(files, workspace=ws.root.resolve(), fl_preset=sim.fl, scratch=scratch) if probe else None
    )
    try:
        start = time.perf_counter()
        with TreeMemory(exclude=alone.process.pid if alone else None) as memory:
            request = SimRequest(
                sim=run_sim, out=out, rounds=rounds, progress=False, fl_overrides=dict(NO_GENERATION)
            )
            summary_path = simulate(request, hooks=[alone] if alone else [])
        wall = time.perf_counter() - start
    finally:
        if alone:
            alone.close()
    summary = json.loads(summary_path.read_text())
    periods = _audit_periods(out)
    measured = []
    for record in summary["rounds"][1:]:
        k = record["round"]
        if k < 2 and rounds > 1:
            continue
        statuses = {s: v["status"] for s, v in record["sites"].items()}
        if set(statuses.values()) != {"accepted"}:
            raise RuntimeError(f"round {k}: not every site trained ({statuses}); the ratio would be void")
        in_sim = {s: float(v["metrics"]["seconds"]) for s, v in record["sites"].items()}
        probe_seconds = alone.rounds[k]["probe_seconds"] if alone else 0.0
        period = periods[k] - probe_seconds
        phases = record["phases"]
        parts = {
            "send_receive": phases["send_receive"],
            "validate": phases["validate"],
            "aggregate": phases["aggregate"],
            "eval": phases.get("eval", 0.0) - probe_seconds,
            "checkpoint_and_audit": periods[k] - record["seconds"],
        }
        parts["other"] = period - sum(parts.values())
        row: dict[str, Any] = {
            "round": k,
            "period_seconds": period,
            "parts": parts,
            "sites_in_simulation_seconds": sum(in_sim.values()),
            # sites one after another: the rest of the train-message phase is scheduling and messages
            "scheduling_and_messages_seconds": phases["send_receive"] - sum(in_sim.values())
            if mode == "serial"
            else None,
            "site_seconds_in_simulation": in_sim,
            "probe_seconds": probe_seconds,
        }
        if alone:
            brackets = (alone.rounds[k - 1], alone.rounds[k])  # alone just before and just after round k
            sites_alone = {s: statistics.mean(b["sites"][s] for b in brackets) for s in names}
            eval_alone = statistics.mean(b["eval"] for b in brackets)
            denominator = sum(sites_alone.values()) + eval_alone
            row.update(
                denominator_seconds=denominator,
                overhead=period / denominator,
                sites_alone_seconds=sites_alone,
                eval_alone_seconds=eval_alone,
                site_slowdown_in_simulation=sum(in_sim.values()) / sum(sites_alone.values()),
            )
        measured.append(row)

    def median(key: str) -> float | None:
        return statistics.median(m[key] for m in measured) if alone else None

    return {
        "sites": count,
        "mode": mode,
        "actors": max(1, int(cores // run_sim.num_cpus)),
        "site_names": names,
        "rounds": rounds,
        "measured_rounds": [m["round"] for m in measured],
        "probe": probe,
        "seconds_per_round": statistics.median(m["period_seconds"] for m in measured),
        "overhead": median("overhead"),
        "denominator_seconds": median("denominator_seconds"),
        "site_slowdown_in_simulation": median("site_slowdown_in_simulation"),
        "per_round": measured,
        "simulation_wall_seconds": wall,
        "peak_memory_gb": {
            "rss_sum": memory.peak_rss / 2**30,
            "pss_sum": memory.peak_pss / 2**30,
            "processes": memory.peak_processes,
        },
    }


def federation_overhead(
    preset: str, *, runs: tuple[tuple[str, int], ...], rounds: int, workspace: Path, probe: bool = True
) -> dict[str, Any]:
    """One row per (mode, site count) in ``runs``; ``overhead`` is the first serial row's (else the first
    row's), ``overhead_parallel`` the first parallel row's, ``scaling`` the rows' seconds per round and memory.
    ``probe`` False: no alone measurements (no overhead), only the simulation's time per round and memory."""
    torch.set_num_threads(1)
    sim = load_preset(SimConfig, "sim", preset, workspace=str(workspace))
    ws = prepare_workspace(sim, workspace, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            _row(sim, ws, count=count, mode=mode, rounds=rounds, scratch=Path(tmp), probe=probe)
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
