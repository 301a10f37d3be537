"""Downstream study: does adding jointly generated image-report pairs to the real pairs help a report generator?

The report generator is MeDiM itself in image->report mode (same preset, seed and steps in both arms):

(a) ``real``: trained from scratch on the real training pairs (public pool + every site, split ``train``);
(b) ``real+generated``: trained from scratch, same seed and steps, on the real pairs plus ``generated`` pairs
    sampled jointly (both regions from [MASK], or after a report prefix of ``prompt_tokens`` tokens taken from
    real training reports) by model (a).

Both are evaluated on the held-out image->report task: BLEU-1..4/METEOR/ROUGE-L (coco protocol when ``java`` is
present, else the medim protocol) and micro/macro label F1 (synthetic labelers); the relative change is
``(b - a) / a``.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from experiments.evaluation import clinical_f1, decode_reports, report_text_metrics, reports_from_images
from experiments.setup import (
    Configs,
    ExperimentData,
    RunSettings,
    load_data,
    prepare_workspace,
    train_central,
)
from medim.config import SamplerConfig
from medim.model.factory import build_from_config
from medim.model.medim import MeDiM
from medim.sampling import joint_prompt, prompted_pair_prompt, sample

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l")
MIN_BASELINE = 1e-3
"""Below this baseline value a relative change is reported as null (it would be a ratio of noise)."""


def canonical(model: MeDiM, x: torch.Tensor) -> torch.Tensor:
    """Sampled sequences x [B, L] rebuilt as clean training rows: image codes, the report up to its first
    ``<eos>``, then ``<eos>`` and padding (what :meth:`Vocab.sequence` makes of real pairs)."""
    vocab = model.vocab
    codes = vocab.image_codes(x)
    return torch.stack([vocab.sequence(c, vocab.text_ids(row)) for c, row in zip(codes, x, strict=True)])


@torch.no_grad()
def generate_pairs(
    model: MeDiM,
    n: int,
    sampler: SamplerConfig,
    *,
    seed: int,
    prefixes: list[list[int]] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """``n`` image-report pairs sampled jointly by ``model``: clean rows [n, L] (:func:`canonical`).

    Unconditional when ``prefixes`` is None, else pair ``i`` starts its report with ``prefixes[i]``."""
    model.eval()
    parts = []
    starts = range(0, n, batch_size)
    for i, start in enumerate(tqdm(starts, desc="generate pairs", disable=not progress)):
        size = min(batch_size, n - start)
        prompt = (
            joint_prompt(model.vocab, size)
            if prefixes is None
            else prompted_pair_prompt(model.vocab, prefixes[start : start + size])
        )
        parts.append(
            canonical(
                model, sample(model, prompt, sampler, generator=torch.Generator().manual_seed(seed + i))
            )
        )
    return torch.cat(parts)


def report_prefixes(model: MeDiM, x0: torch.Tensor, n: int, tokens: int, *, seed: int) -> list[list[int]]:
    """The first ``tokens`` report ids of ``n`` rows of x0 [N, L] drawn with replacement (seeded)."""
    rows = torch.randint(0, x0.shape[0], (n,), generator=torch.Generator().manual_seed(seed))
    return [model.vocab.text_ids(x0[r])[:tokens] for r in rows.tolist()]


def augment(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """The training rows of arm (b): the real rows [N, L] followed by the generated rows [M, L]."""
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real rows have length {real.shape[1]}, generated rows {generated.shape[1]}")
    return torch.cat([real, generated])


def evaluate_generator(
    model: MeDiM, data: ExperimentData, configs: Configs, settings: RunSettings
) -> dict[str, Any]:
    """Image->report on the first ``samples`` held-out rows per modality: text metrics and label F1."""
    results: dict[str, Any] = {}
    for modality, seqs in data.heldout.items():
        picked = seqs.x0[: settings.samples]
        references = decode_reports(model, picked)
        generated = reports_from_images(model, picked, configs.sampler, seed=settings.seed)
        results[modality] = {
            "text": report_text_metrics(references, generated),
            "clinical": clinical_f1(modality, references, generated),
            "examples": [
                {"reference": r, "generated": g} for r, g in list(zip(references, generated, strict=True))[:3]
            ],
        }
    return results


def relative_changes(real: dict[str, Any], augmented: dict[str, Any]) -> dict[str, Any]:
    """``(b - a) / a`` per modality for the text metrics and micro/macro label F1; null where ``a`` is below
    :data:`MIN_BASELINE` or a value is missing (the reason under ``unavailable``)."""
    out: dict[str, Any] = {}
    for modality in real:
        pairs = {m: (real[modality]["text"][m], augmented[modality]["text"][m]) for m in METRICS}
        for key in ("micro_f1", "macro_f1"):
            pairs[f"clinical_{key}"] = (real[modality]["clinical"][key], augmented[modality]["clinical"][key])
        changes: dict[str, float | None] = {}
        unavailable: dict[str, str] = {}
        for metric, (a, b) in pairs.items():
            if a is None or b is None:
                changes[metric], unavailable[metric] = None, "metric unavailable in one arm"
            elif a < MIN_BASELINE:
                changes[metric], unavailable[metric] = None, f"baseline value {a:.2g} < {MIN_BASELINE}"
            else:
                changes[metric] = (b - a) / a
        out[modality] = {"relative_change": changes, "unavailable": unavailable}
    return out


def run_downstream(settings: RunSettings, *, generated: int, prompt_tokens: int) -> dict[str, Any]:
    """Arms (a) and (b) of the module docstring; returns the results object (``results.json``)."""
    configs = Configs.of(settings)
    ws = prepare_workspace(settings)
    data = load_data(ws, build_from_config(configs.model))
    real = data.train.x0
    arm_a = train_central(configs.model, real, configs, progress=settings.progress, desc="real")
    prefixes = (
        report_prefixes(arm_a.model, real, generated, prompt_tokens, seed=settings.seed)
        if prompt_tokens
        else None
    )
    pairs = generate_pairs(
        arm_a.model,
        generated,
        configs.sampler,
        seed=settings.seed,
        prefixes=prefixes,
        progress=settings.progress,
    )
    generated_reports = decode_reports(arm_a.model, pairs)
    arm_b = train_central(
        configs.model, augment(real, pairs), configs, progress=settings.progress, desc="real+generated"
    )
    eval_a = evaluate_generator(arm_a.model, data, configs, settings)
    eval_b = evaluate_generator(arm_b.model, data, configs, settings)
    return {
        "experiment": "downstream",
        "report_generator": "MeDiM (the run's preset) in image->report mode, trained from scratch",
        "pair_generator": "arm (a)'s model, joint generation"
        + (f" after {prompt_tokens}-token report prefixes of real training reports" if prompt_tokens else ""),
        "settings": settings.to_dict() | {"generated": generated, "prompt_tokens": prompt_tokens},
        "configs": configs.to_dict(),
        "data": {
            "real_pairs": int(real.shape[0]),
            "generated_pairs": int(pairs.shape[0]),
            "augmented_pairs": int(real.shape[0] + pairs.shape[0]),
            "generated_empty_reports": sum(not r.strip() for r in generated_reports),
            "heldout_sequences": {m: len(s) for m, s in data.heldout.items()},
            "evaluated_per_modality": {m: min(settings.samples, len(s)) for m, s in data.heldout.items()},
        },
        "generated_examples": generated_reports[:5],
        "arms": {
            "real": {"train": arm_a.summary(), "heldout": eval_a},
            "real+generated": {"train": arm_b.summary(), "heldout": eval_b},
        },
        "change": relative_changes(eval_a, eval_b),
    }
