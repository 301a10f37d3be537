"""Sampling quality: MaskGIT with 16 steps vs one token per step, on the same trained model and held-out prompts.

The model is the cached base model of a bootstrapped workspace (:func:`quality_workspace`: the demo's ``small``
workspace, or a ``tiny`` one pretrained for a few hundred steps for ``--quick``). For each held-out set (``cxr``,
``pathology``) the first ``samples`` pairs are the prompts: report->image and image->report generations
(:func:`medim.evaluate.generate_both_ways`, the default sampler preset with its CFG) are scored as the
coordinator's last-round evaluation scores them (:meth:`server.generation.GenerationEval.score`, without the
Java text metrics): ``domain_fid`` against the tokenizer reconstructions of the held-out images, with the
workspace's cached domain classifier; ``label_f1_micro`` of the reports with the set's synthetic labeler.

The slow reference runs ``image_tokens + text_tokens`` steps: more steps than either task generates, so the
arccos schedule is capped at one commit per step and each task takes exactly one forward pass (two with CFG) per
generated position. The fast sampler runs 16 steps with each of ``seeds``; the slow one with the first seed.

Per set and metric: ``relative_difference`` = (mean over the fast seeds - slow) / slow (undefined, and left out
of the figure, when slow is 0); next to it, the noise: ``seed_spread`` = (max - min) / mean of the fast
sampler's metric over its seeds (how much sampling noise alone moves it on these prompts), and
``bootstrap_first_seed`` = the 5/50/95th percentiles of the first-seed difference over prompt resamples (the
same indices for both samplers; FID of a resample counts repeated images, so that is a rough spread, not a
calibrated interval). With a few dozen samples domain FID is strongly biased upwards and label F1 moves in steps
of about 1/N: compare the difference with both (and with ``absolute_difference`` where slow is near 0). Sampling seconds (wall and this process's CPU time) of both
samplers are reported too; their ceiling ratio is ``forward_pass_ratio`` (both tasks' positions / 2 x 16).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medim.config import SamplerConfig, load_preset
from medim.evaluate import generate_both_ways
from medim.metrics.clinical import LABELERS, label_scores
from medim.metrics.domain import DomainFeatures
from medim.metrics.images import extract, frechet_distance
from medim.model.factory import text_tokenizer
from medim.pipeline import Workspace
from server.config import GenerationConfig
from server.evaluation import DOMAIN_CACHE
from server.generation import GenerationEval, Metrics, Samples
from simulation.config import SimConfig
from simulation.run import prepare_workspace

FAST_STEPS = 16
FIGURES = {"domain_fid": "domain_fid", "label_f1": "label_f1_micro"}


def quality_workspace(preset: str, root: Path, *, pretrain_steps: int = 300) -> Workspace:
    """The workspace whose base model is sampled: ``small`` is the demo's (``sim=small``: all four hospitals,
    the ``small`` pretraining preset); ``tiny`` uses the test hospitals (``sim=tiny``) with ``pretrain_steps``
    steps of the ``tiny`` pretraining preset (the simulation's 3 steps learn nothing). Cached under ``root``."""
    sim = load_preset(SimConfig, "sim", preset, workspace=str(root))
    if preset == "tiny":
        sim = replace(sim, pretrain_steps=pretrain_steps)
    return prepare_workspace(sim, root, progress=False)


def _pretrain_summary(folder: Path) -> dict[str, Any] | None:
    """Steps, seconds and last logged loss of the base model's pretraining (``pretrain.json``; the presets cap
    it by time, so a loaded machine pretrains fewer steps)."""
    path = folder / "pretrain.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    history = raw.get("history") or [{}]
    return {"steps": raw.get("steps"), "seconds": raw.get("seconds"), "last_logged": history[-1]}


def _relative(fast: float, slow: float) -> float | None:
    """(fast - slow) / |slow|; None (undefined) when slow is 0."""
    return (fast - slow) / abs(slow) if slow else None


def _label_f1(modality: str, refs: list[set[str]], hyps: list[set[str]]) -> float:
    labeler = LABELERS[f"synthetic-{modality}"]
    return label_scores(refs, hyps, labeler.labels).micro.f1


def _bootstrap(
    modality: str,
    features: dict[str, torch.Tensor],
    labels: dict[str, list[set[str]]],
    rounds: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Percentiles of the relative difference fast vs slow over ``rounds`` resamples of the prompts."""
    rng = np.random.default_rng(seed)
    n = len(labels["refs"])
    diffs: dict[str, list[float | None]] = {"domain_fid": [], "label_f1": []}
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        if len(set(idx.tolist())) < 2:
            continue
        pick = torch.from_numpy(idx)
        fid = {m: frechet_distance(features["real"][pick], features[m][pick]) for m in ("fast", "slow")}
        refs = [labels["refs"][i] for i in idx]
        f1 = {m: _label_f1(modality, refs, [labels[m][i] for i in idx]) for m in ("fast", "slow")}
        diffs["domain_fid"].append(_relative(fid["fast"], fid["slow"]))
        diffs["label_f1"].append(_relative(f1["fast"], f1["slow"]))
    out = {}
    for name, values in diffs.items():
        finite = [v for v in values if v is not None]
        if finite:
            p5, p50, p95 = np.percentile(finite, [5, 50, 95])
            out[name] = {"p5": float(p5), "p50": float(p50), "p95": float(p95), "resamples": len(finite)}
    return out


def sampling_quality(
    ws: Workspace,
    *,
    samples: int,
    seeds: tuple[int, ...] = (0, 1),
    domain_steps: int = 300,
    bootstrap_rounds: int = 200,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Domain FID and label F1 of 16-step vs one-token-per-step samples (see the module docstring); the domain
    classifiers are trained once and cached in ``cache`` (default: the workspace's, as the coordinator's)."""
    torch.set_num_threads(1)
    model = ws.load_base().eval()
    vocab = model.vocab
    slow_steps = vocab.image_tokens + vocab.text_tokens
    config = GenerationConfig(samples=samples, fid=False, domain_fid=True, domain_steps=domain_steps)
    evaluator = GenerationEval(
        config, ws.load_vq(), text_tokenizer(model.cfg), cache or ws.root / DOMAIN_CACHE
    )
    sampler = load_preset(SamplerConfig, "sampler", config.sampler)
    runs = [("fast", FAST_STEPS, seed) for seed in seeds] + [("slow", slow_steps, seeds[0])]
    n_img, n_txt = vocab.image_tokens, vocab.text_tokens
    out: dict[str, Any] = {
        "workspace": str(ws.root),
        "preset": ws.preset,
        "base_model": str(ws.base_model),
        "base_pretrain": _pretrain_summary(ws.base_model),
        "sampler": asdict(sampler),
        "steps": {"fast": FAST_STEPS, "slow": slow_steps},
        "generated_positions": {"report_to_image": n_img, "image_to_report": n_txt},
        "seeds": {"fast": list(seeds), "slow": [seeds[0]]},
        "samples_per_set": samples,
        "sets": {},
    }
    seconds = {"fast": 0.0, "slow": 0.0}
    cpu = {"fast": 0.0, "slow": 0.0}
    for modality, folder in sorted(ws.heldout.items()):
        x0 = ws.sequences([folder], model).x0[:samples]
        evaluator.domain_classifier(modality)  # trained (and cached) outside the timed part
        metrics: dict[str, dict[int, Metrics]] = {"fast": {}, "slow": {}}
        kept: dict[str, Samples] = {}
        for mode, steps, seed in runs:
            start, start_cpu = time.perf_counter(), time.process_time()
            gen = generate_both_ways(model, x0, sampler=replace(sampler, steps=steps), seed=seed)
            seconds[mode] += time.perf_counter() - start
            cpu[mode] += time.process_time() - start_cpu
            metrics[mode][seed] = evaluator.score(vocab, modality, gen, final=True, text_metrics=False)
            if seed == seeds[0]:
                kept[mode] = evaluator.last[modality]
        row: dict[str, Any] = {"samples": int(x0.shape[0])}
        for name, key in FIGURES.items():
            fast = [float(metrics["fast"][s][key] or 0.0) for s in seeds]
            slow = float(metrics["slow"][seeds[0]][key] or 0.0)
            mean = statistics.fmean(fast)
            row[name] = {
                "fast": mean,
                "slow": slow,
                "relative_difference": _relative(mean, slow),
                "absolute_difference": mean - slow,
                "fast_seeds": fast,
                "first_seed_relative_difference": _relative(fast[0], slow),
                "seed_spread": (max(fast) - min(fast)) / abs(mean) if mean else None,
            }
        row["metrics"] = {m: metrics[m][seeds[0]] for m in ("fast", "slow")}
        features = DomainFeatures(evaluator.domain_classifier(modality))
        feats = {
            "real": extract(features, list(kept["slow"].real)),
            "fast": extract(features, list(kept["fast"].fake)),
            "slow": extract(features, list(kept["slow"].fake)),
        }
        labeler = LABELERS[f"synthetic-{modality}"]
        labels = {
            "refs": [labeler.extract(r) for r in kept["slow"].references],
            "fast": [labeler.extract(r) for r in kept["fast"].reports],
            "slow": [labeler.extract(r) for r in kept["slow"].reports],
        }
        for name, spread in _bootstrap(modality, feats, labels, bootstrap_rounds, seed=0).items():
            row[name]["bootstrap_first_seed"] = spread
        out["sets"][modality] = row
    per_seed = len(seeds)
    out["seconds"] = {"fast_per_seed": seconds["fast"] / per_seed, "slow": seconds["slow"]}
    out["cpu_seconds"] = {"fast_per_seed": cpu["fast"] / per_seed, "slow": cpu["slow"]}
    out["speedup"] = seconds["slow"] / (seconds["fast"] / per_seed)
    out["speedup_cpu_time"] = cpu["slow"] / (cpu["fast"] / per_seed)
    out["forward_pass_ratio"] = (n_img + n_txt) / (2 * FAST_STEPS)
    for name in FIGURES:
        values = {m: r[name]["relative_difference"] for m, r in out["sets"].items()}
        defined = [abs(v) for v in values.values() if v is not None]
        out[f"{name}_relative_difference"] = max(defined) if defined else None
        out[f"{name}_undefined_sets"] = sorted(m for m, v in values.items() if v is None)
    return out
