"""The suite's side-by-side measurements besides MFU: DP overhead, upload size and 16-bit transport, sampling
speed, client memory, sequence-length scaling, federation overhead. Each returns a JSON-able dict."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import medim
from benchmarks.dp_modes import make_step
from benchmarks.train_throughput import measure
from medim.config import SamplerConfig
from medim.malloc import retain_freed_memory
from medim.model.lora import trainable_state
from medim.model.transport import encode_state, state_nbytes
from medim.sampling import joint_prompt, sample


def dp_overhead(preset: str, *, steps: int, modes: tuple[str, ...], batch: int = 16) -> dict[str, Any]:
    """Median DP-SGD step time / plain step time per Opacus mode, modes run round-robin in one process (malloc
    set as the training loop sets it, :mod:`medim.malloc`)."""
    torch.set_num_threads(1)
    retain_freed_memory()
    fns = {mode: make_step(mode, preset, batch)[0] for mode in ("plain", *modes)}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {mode: [] for mode in fns}
    for _ in range(steps):
        for mode, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[mode].append(time.perf_counter() - start)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    return {
        "seconds_per_step": medians,
        "ratio": {mode: medians[mode] / medians["plain"] for mode in modes},
    }


TRAINABLE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "lora+adaln_offsets": {"site_trains": ["lora", "adaln_offsets"]},
    "lora+adaln_offsets, adaln single": {"site_trains": ["lora", "adaln_offsets"], "adaln": "single"},
}


def upload(preset: str, *, transport: str = "float32") -> dict[str, Any]:
    """Bytes a site uploads per round / bytes of the full base model (fp32), per trainable set and transport.

    ``bytes`` is what the protocol puts in the reply (:func:`client.protocol.state_to_record`, Flower's
    ``ArrayRecord.count_bytes``: payload plus the .npy framing, what ``bytes_up`` counts), ``payload_bytes`` the
    tensors alone. ``transport`` is the configured one (``fl.transport``) that the figure reports."""
    from client.protocol import TRANSPORTS, state_to_record

    full = state_nbytes(medim.build_model(preset, seed=0).state_dict())
    out: dict[str, Any] = {"full_model_bytes": full, "transport": transport, "sets": {}}
    for name, overrides in TRAINABLE_SETS.items():
        state = trainable_state(medim.build_model(preset, seed=0, lora=True, **overrides))
        row: dict[str, Any] = {"parameters": sum(v.numel() for v in state.values())}
        for dtype in TRANSPORTS:
            nbytes = state_to_record(state, dtype).count_bytes()
            row[dtype] = {
                "bytes": nbytes,
                "payload_bytes": state_nbytes(encode_state(state, dtype)),
                "fraction": nbytes / full,
            }
        out["sets"][name] = row
    return out


def transport_quality(
    preset: str, *, rounds: int, workspace: Path, local_steps: int | None = None, dp: str = "off"
) -> dict[str, Any]:
    """Held-out loss after ``rounds`` federated rounds with fp32 vs bf16 transport (``fl.transport``), side by
    side: two Flower simulations of the ``preset`` sim (its sites and seeds, generation metrics off, privacy
    preset ``dp`` with seeded noise), i.e. the real protocol path (16-bit encoding both ways, Ray messages,
    validation of the 16-bit wire, fp32 aggregation). Also each run's measured ``bytes_up`` per round."""
    from dataclasses import replace

    from medim.config import load_preset
    from simulation.config import SimConfig
    from simulation.run import SimRequest, simulate

    sim = load_preset(SimConfig, "sim", preset, workspace=str(workspace), dp=dp, dp_seed=0)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("float32", "bfloat16"):
            overrides: dict[str, Any] = {"transport": transport, "generation": {"every": 0}}
            if local_steps:
                overrides["local_steps"] = local_steps
            budget = dict.fromkeys(
                sim.sites, 1e6
            )  # every round trains (the tiny sites' default budget is 1 round)
            request = SimRequest(
                sim=replace(sim, site_epsilon=budget),
                out=Path(tmp) / transport,
                rounds=rounds,
                progress=False,
                fl_overrides=overrides,
            )
            summary = json.loads(simulate(request).read_text())
            first, last = summary["rounds"][0]["eval"], summary["rounds"][-1]["eval"]
            runs[transport] = {
                "initial_loss": {m: v["loss"] for m, v in first.items()},
                "heldout_loss": {m: v["loss"] for m, v in last.items()},
                "bytes_up_per_round": [r["bytes_up"] for r in summary["rounds"][1:]],
                "accepted_per_round": [len(r["accepted"]) for r in summary["rounds"][1:]],
                "trainable_bytes": summary["trainable_bytes"],
            }
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    sets = sorted(fp32["heldout_loss"])
    gap = {m: abs(bf16["heldout_loss"][m] - fp32["heldout_loss"][m]) for m in sets}
    return {
        "preset": preset,
        "dp": dp,
        "rounds": rounds,
        "local_steps": local_steps,
        "sites": list(sim.sites),
        "runs": runs,
        "relative_difference": {m: gap[m] / fp32["heldout_loss"][m] for m in sets},
        "difference_over_training_change": {
            m: gap[m] / max(abs(fp32["initial_loss"][m] - fp32["heldout_loss"][m]), 1e-12) for m in sets
        },
        "bytes_up_ratio": sum(bf16["bytes_up_per_round"]) / max(sum(fp32["bytes_up_per_round"]), 1),
    }


def sampling_speed(preset: str, *, batch: int = 4, repeats: int = 1) -> dict[str, Any]:
    """MaskGIT with 16 steps vs one token per step (as many steps as generated positions), same model and
    prompt (unconditional pairs, so no CFG pass). One untimed 2-step run first (lazy initialisation), then the
    two samplers alternate ``repeats`` times; medians of wall-clock and of this process's CPU time (the latter
    is not inflated while other jobs hold the cores). ``forward_pass_ratio`` (positions / 16) is the ceiling."""
    torch.set_num_threads(1)
    model = medim.build_model(preset, seed=0).eval()
    vocab = model.vocab
    positions = vocab.image_tokens + vocab.text_tokens
    modes = {"maskgit_16": 16, "one_per_step": positions}
    sample(
        model, joint_prompt(vocab, batch), SamplerConfig(steps=2), generator=torch.Generator().manual_seed(0)
    )
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(repeats):
        for name, steps in modes.items():
            g = torch.Generator().manual_seed(r)
            start, start_cpu = time.perf_counter(), time.process_time()
            sample(model, joint_prompt(vocab, batch), SamplerConfig(steps=steps), generator=g)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    out: dict[str, Any] = {"generated_positions": positions, "batch": batch, "repeats": repeats}
    for name, steps in modes.items():
        seconds, cpu_seconds = statistics.median(wall[name]), statistics.median(cpu[name])
        out[name] = {
            "steps": steps,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "seconds_per_step": seconds / steps,
            "all_seconds": wall[name],
        }
    out["speedup"] = out["one_per_step"]["seconds"] / out["maskgit_16"]["seconds"]
    out["speedup_cpu_time"] = out["one_per_step"]["cpu_seconds"] / out["maskgit_16"]["cpu_seconds"]
    out["forward_pass_ratio"] = positions / 16
    return out


_CLIENT = """
import json, sys, torch
import medim
from benchmarks.machine import peak_rss_gb
from medim.config import DiffusionConfig, TrainConfig
from medim.privacy import PrivacyConfig, train_private
from benchmarks.train_throughput import records
torch.set_num_threads(1)
preset, steps, ledger = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = medim.build_model(preset, seed=0, lora=True)
x0 = records(model, 256)
train = TrainConfig(steps=steps, batch_size=16, lr=1e-4, warmup_steps=1, autocast_bf16=True)
train_private(model, x0, diffusion=DiffusionConfig(), train=train, privacy=PrivacyConfig(delta=1e-3),
              ledger_path=ledger, progress=False)
print(json.dumps({"peak_rss_gb": peak_rss_gb()}))
"""

_SERVER = """
import json, sys, torch
import medim
from benchmarks.machine import peak_rss_gb
from medim.config import DiffusionConfig
from medim.evaluate import heldout_loss
from benchmarks.train_throughput import records
torch.set_num_threads(1)
model = medim.build_model(sys.argv[1], seed=0, lora=True)
heldout_loss(model, records(model, 64), diffusion=DiffusionConfig(), t_grid=(0.25, 0.5, 0.75), seed=0)
print(json.dumps({"peak_rss_gb": peak_rss_gb()}))
"""


def _child(code: str, *args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path.cwd(),
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_gb"])


def memory(preset: str, *, steps: int, sites: int = 8) -> dict[str, Any]:
    """Peak RSS of one client process (DP-SGD hooks round of ``steps`` steps) and of a coordinator-like process
    (model + held-out evaluation), each in its own subprocess; estimate for ``sites`` clients + the server."""
    with tempfile.TemporaryDirectory() as tmp:
        client = _child(_CLIENT, preset, str(steps), str(Path(tmp) / "ledger.json"))
    server = _child(_SERVER, preset)
    return {
        "client_peak_rss_gb": client,
        "server_peak_rss_gb": server,
        "sites": sites,
        "simulation_estimate_gb": sites * client + server,
    }


def seq_scaling(preset: str, *, steps: int) -> dict[str, Any]:
    """Local step time at the preset's sequence length L and at about 2L (text region extended)."""
    base = medim.build_model(preset, seed=0)
    text = base.vocab.text_tokens
    rows = []
    for extra in (0, base.vocab.seq_len):
        r = measure(preset, steps=steps, batch_size=8, overrides={"text_tokens": text + extra})
        rows.append({"seq_len": r.seq_len, "seconds_per_step": r.seconds_per_step, "mfu": r.mfu})
    return {"rows": rows, "time_ratio_2x_len": rows[1]["seconds_per_step"] / rows[0]["seconds_per_step"]}


def federation(
    preset: str, *, runs: tuple[tuple[str, int], ...], rounds: int, workspace: Path
) -> dict[str, Any]:
    """Flower simulation (Ray) round period vs the same sites' rounds and evaluation run alone in this process,
    for each (mode, site count) of ``runs`` (see :mod:`benchmarks.federation`)."""
    from benchmarks.federation import federation_overhead

    return federation_overhead(preset, runs=runs, rounds=rounds, workspace=workspace)


def tokenizer_training(presets: tuple[str, ...], *, steps: int) -> dict[str, Any]:
    """Seconds per training step of each image tokenizer preset (random 64x64 images, the preset's batch and
    dtype), and the projected minutes for the preset's full ``train.steps``."""
    from medim.config import load_preset
    from medim.tokenize.vq import VQTokenizer
    from medim.tokenize.vq_config import TokenizerConfig
    from medim.tokenize.vq_data import ImageSet
    from medim.tokenize.vq_train import _train_step

    out: dict[str, Any] = {}
    for name in presets:
        config = load_preset(TokenizerConfig, "tokenizer", name)
        res = config.resolution
        g = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (64, 3, res, res), dtype=torch.uint8, generator=g)
        images = ImageSet(ids=[str(i) for i in range(64)], modalities=["cxr"] * 64, pixels=pixels)
        model = VQTokenizer(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
        usage = torch.zeros(config.codebook_size, dtype=torch.float64)
        _train_step(model, optimizer, images, usage, config, 0)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            _train_step(model, optimizer, images, usage, config, step)
        per_step = (time.perf_counter() - start) / steps
        out[name] = {
            "seconds_per_step": per_step,
            "preset_steps": config.train.steps,
            "projected_minutes": per_step * config.train.steps / 60,
            "batch_size": config.train.batch_size,
            "image_tokens": config.image_tokens,
        }
    return out


def sampling_quality(
    preset: str,
    *,
    samples: int,
    seeds: tuple[int, ...],
    domain_steps: int,
    workspace: Path | None,
    tiny_workspace: Path,
) -> dict[str, Any]:
    """Domain FID and label F1 of 16-step vs one-token-per-step samples of a trained base model (see
    :mod:`benchmarks.sampling_quality`); ``workspace`` default: ``tiny_workspace`` (the suite's cached tiny
    workspace) for ``tiny``, else ``runs/bench-workspace-<preset>``."""
    from benchmarks.sampling_quality import quality_workspace
    from benchmarks.sampling_quality import sampling_quality as measure_quality

    root = workspace or (tiny_workspace if preset == "tiny" else Path(f"runs/bench-workspace-{preset}"))
    ws = quality_workspace(preset, root)
    return measure_quality(ws, samples=samples, seeds=seeds, domain_steps=domain_steps)
