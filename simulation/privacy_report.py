"""``medim-simulate --privacy-report``: privacy evidence for a finished run, added to summary.json and report.html.

For one site (the first of the run with image-report records) it measures, with :mod:`medim.privacy_eval`:

- membership inference against models trained from the base model on the site's train split for ``steps``
  local steps without DP and with DP at the site's clip and delta, the noise multiplier calibrated so that the
  steps reach exactly the site's epsilon budget (default 8; DP switched on even when the run had it off), and
  against the run's final global model; non-members are the site's held-back records and the coordinator's
  held-out records of the same modality (same distribution, never trained on);
- gradient leakage of one training record's single-record update (raw, and after DP clipping + noise);
- memorisation: image->report generations of the final global model on held-out images vs the site's training
  reports, with held-out real reports as the template-overlap baseline.

The models trained here keep their ledgers under ``OUT/privacy-evidence/``, never in the site's state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from opacus.accountants.utils import get_noise_multiplier

from client.config import SiteConfig
from medim.config import DiffusionConfig, SamplerConfig, TrainConfig, load_preset
from medim.data.sequences import SequenceSet
from medim.model.factory import text_tokenizer
from medim.model.lora import apply_lora, load_trainable_state
from medim.model.medim import MeDiM
from medim.pipeline import Workspace
from medim.privacy import train_private
from medim.privacy_eval import membership_inference, memorisation, token_leakage
from medim.report import Page, write_json_atomic
from medim.sampling import image_to_text_prompt, sample
from server.app import CHECKPOINTS
from server.checkpoint import latest_path, load_state

EVIDENCE = "privacy-evidence"


def _fresh(ws: Workspace, seed: int) -> MeDiM:
    model = ws.load_base()
    torch.manual_seed(seed)
    return apply_lora(model)


def _reports(model: MeDiM, x: torch.Tensor) -> list[str]:
    text = text_tokenizer(model.cfg)
    return [text.decode(model.vocab.text_ids(row)) for row in x]


def privacy_evidence(
    out: Path,
    ws: Workspace,
    site: SiteConfig,
    *,
    steps: int = 60,
    max_records: int = 64,
    generations: int = 8,
    sampler_steps: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``privacy_evidence`` section for ``site`` of the run in ``out`` (see the module docstring).

    ``sampler_steps`` > 0 overrides the default sampler's steps for the memorisation generations.
    """
    diffusion = load_preset(DiffusionConfig, "diffusion", site.diffusion)
    probe = _fresh(ws, seed)
    data = ws.sequences([Path(p) for p in site.data], probe)
    modality = sorted(set(data.modalities))[0]
    members = data.select(splits=site.splits, modality=modality)
    site_held = data.select(splits=["validate", "test"], modality=modality)
    held = ws.sequences([ws.heldout[modality]], probe)
    outside = SequenceSet.concat([site_held, held], probe.vocab.seq_len)
    x_in, x_out = members.x0[:max_records], outside.x0[:max_records]
    train = TrainConfig(
        steps=steps,
        batch_size=min(8, x_in.shape[0]),
        lr=3e-3,
        warmup_steps=2,
        seed=seed,
        autocast_bf16=False,
        log_every=steps,
    )
    sigma = get_noise_multiplier(
        target_epsilon=site.privacy.epsilon_budget,
        target_delta=site.privacy.delta,
        sample_rate=train.batch_size / x_in.shape[0],
        steps=steps,
        accountant=site.privacy.accountant,
    )
    attacks: dict[str, Any] = {}
    for name, enabled in (("no_dp", False), ("dp", True)):
        privacy = replace(site.privacy, enabled=enabled, noise_multiplier=sigma, epsilon_budget=1e6)
        model = _fresh(ws, seed)
        ledger = out / EVIDENCE / f"{site.name}-{name}-ledger.json"
        ledger.unlink(missing_ok=True)
        result = train_private(
            model, x_in, diffusion=diffusion, train=train, privacy=privacy, ledger_path=ledger, progress=False
        )
        attack = membership_inference(model, x_in, x_out, diffusion=diffusion, seed=seed)
        attacks[name] = {**asdict(attack), "epsilon": result.epsilon, "steps": result.steps}
        if enabled:
            attacks[name]["noise_multiplier"] = sigma
    final = latest_path(out / CHECKPOINTS)
    global_model = _fresh(ws, seed)
    if final is not None:
        state = load_state(final)
        load_trainable_state(global_model, {k: torch.from_numpy(v) for k, v in state.trainable.items()})
        attacks["federated_global"] = asdict(
            membership_inference(global_model, x_in, x_out, diffusion=diffusion, seed=seed)
        )
    leakage = {
        "raw": asdict(
            token_leakage(probe, x_in[0], diffusion=diffusion, noise_multiplier=0.0, max_grad_norm=1e12)
        ),
        "dp": asdict(
            token_leakage(
                probe,
                x_in[0],
                diffusion=diffusion,
                noise_multiplier=site.privacy.noise_multiplier,
                max_grad_norm=site.privacy.max_grad_norm,
                seed=seed,
            )
        ),
    }
    sampler = load_preset(SamplerConfig, "sampler", "default")
    sampler = replace(sampler, steps=sampler_steps or sampler.steps)
    with torch.no_grad():
        global_model.eval()
        prompts = image_to_text_prompt(global_model.vocab, x_out[:generations])
        generated = sample(global_model, prompts, sampler, generator=torch.Generator().manual_seed(seed))
    training_reports = members.reports
    return {
        "site": site.name,
        "modality": modality,
        "privacy": {
            "noise_multiplier": site.privacy.noise_multiplier,
            "max_grad_norm": site.privacy.max_grad_norm,
            "delta": site.privacy.delta,
        },
        "membership_inference": attacks,
        "gradient_leakage": leakage,
        "memorisation": {
            "generated": asdict(memorisation(_reports(global_model, generated), training_reports)),
            "heldout_baseline": asdict(memorisation(held.reports[:generations], training_reports)),
        },
    }


def evidence_rows(evidence: dict[str, Any]) -> list[list[Any]]:
    """Rows (attack, setting, measure, value) for the report page."""
    rows: list[list[Any]] = []
    for name, result in evidence["membership_inference"].items():
        for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "epsilon", "noise_multiplier"):
            if key in result:
                rows.append(["membership inference", name, key, result[key]])
    for name, result in evidence["gradient_leakage"].items():
        rows += [["gradient leakage", name, key, result[key]] for key in ("auc", "correlation")]
    for name, result in evidence["memorisation"].items():
        for key in ("mean_max_jaccard", "max_jaccard", "verbatim_fraction"):
            rows.append(["memorisation", name, key, result[key]])
    return rows


def add_privacy_evidence(summary_path: Path, evidence: dict[str, Any]) -> None:
    """Write ``evidence`` into summary.json (``privacy_evidence``) and re-render report.html with its table."""
    from simulation.summary import finite, render_report

    summary = json.loads(summary_path.read_text())
    summary["privacy_evidence"] = finite(evidence)
    write_json_atomic(summary_path, summary)
    render_report(summary, summary_path.with_name("report.html"))


def evidence_section(page: Page, evidence: dict[str, Any]) -> None:
    """The report page's privacy evidence table."""
    page.table(
        f"Privacy evidence ({evidence['site']}, {evidence['modality']})",
        evidence_rows(evidence),
        ["attack", "setting", "measure", "value"],
    )
