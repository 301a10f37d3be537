"""One round at a site, as a plain function: load the model and the site's data, set the received trainable state,
train locally with :func:`medim.privacy.train_private` (DP-SGD when the site's privacy is on; its ledger in the
site's state dir records every round, private or not, and refuses a round that would exceed the budget), and
return the new trainable state and aggregate metrics.

Nothing stays in memory between rounds (each Flower message may run in a fresh process): the base model, data,
privacy ledger and the optimizer's moments (:mod:`client.moments`) are read from the site's own paths every round.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from client.config import SiteConfig
from client.moments import load_moments, save_moments
from client.protocol import TrainInstructions
from medim.config import DiffusionConfig, TrainConfig, load_preset
from medim.data.sequences import SequenceSet, load_sequences
from medim.evaluate import heldout_loss
from medim.model.checkpoint import load_checkpoint
from medim.model.factory import text_tokenizer
from medim.model.lora import apply_lora, load_trainable_state, trainable_state
from medim.model.medim import MeDiM
from medim.privacy import PrivacyConfig, train_private
from medim.tokenize.vq import load_tokenizer

LOSS_T_GRID = (0.25, 0.5, 0.75)


@dataclass
class SiteRound:
    """What a site returns: the trainable state (None when it refused) and only aggregate scalar metrics."""

    state: dict[str, torch.Tensor] | None
    metrics: dict[str, int | float] = field(default_factory=dict)
    reason: str = ""


def round_seed(seed: int, server_round: int, site: str) -> int:
    """A seed for (run seed, round, site), stable across processes and Python versions."""
    return zlib.crc32(f"{seed}/{server_round}/{site}".encode())


def round_privacy(privacy: PrivacyConfig, server_round: int, site: str) -> PrivacyConfig:
    """The round's privacy settings: a configured (test-only) seed becomes a fresh stream per round."""
    if privacy.seed is None:
        return privacy
    return replace(privacy, seed=round_seed(privacy.seed, server_round, site))


def load_model(site: SiteConfig, state: dict[str, torch.Tensor]) -> MeDiM:
    """The site's base model with LoRA applied and the received trainable state loaded."""
    model = load_checkpoint(Path(site.base_model))
    apply_lora(model)
    load_trainable_state(model, state)
    return model


def load_site_data(site: SiteConfig, model: MeDiM) -> SequenceSet:
    """All sequences of the site's prepared folders for ``model``'s vocabulary, limited to its modalities."""
    data = load_sequences(
        [Path(p) for p in site.data],
        vq=load_tokenizer(Path(site.tokenizer)),
        text=text_tokenizer(model.cfg),
        vocab=model.vocab,
    )
    if site.modalities:
        data = SequenceSet.concat([data.select(modality=m) for m in site.modalities], model.vocab.seq_len)
    return data


def modality_losses(
    model: MeDiM, data: SequenceSet, *, diffusion: DiffusionConfig, seed: int, rows: int, autocast_bf16: bool
) -> dict[str, float]:
    """``loss-<modality>``: the fixed-grid joint loss on up to ``rows`` held-back (else training) sequences."""
    out: dict[str, float] = {}
    for modality in sorted(set(data.modalities)):
        held = data.select(splits=["validate", "test"], modality=modality)
        pool = held if len(held) else data.select(modality=modality)
        x0 = pool.x0[:rows]
        if rows and x0.shape[0]:
            loss = heldout_loss(
                model, x0, diffusion=diffusion, t_grid=LOSS_T_GRID, seed=seed, autocast_bf16=autocast_bf16
            )
            out[f"loss-{modality}"] = loss.loss
    return out


def run_site_round(
    site: SiteConfig,
    instructions: TrainInstructions,
    state: dict[str, torch.Tensor],
    *,
    progress: bool = False,
) -> SiteRound:
    """Train the received trainable state ``state`` ({name: tensor}) at ``site`` for one round."""
    start = time.perf_counter()
    torch.set_num_threads(site.threads)
    seed = round_seed(instructions.seed, instructions.server_round, site.name)
    torch.manual_seed(seed)
    model = load_model(site, state)
    data = load_site_data(site, model)
    train_rows = data.select(splits=site.splits)
    diffusion = load_preset(DiffusionConfig, "diffusion", site.diffusion)
    train = TrainConfig(
        steps=instructions.local_steps,
        batch_size=instructions.batch_size,
        lr=instructions.lr,
        warmup_steps=instructions.warmup_steps,
        seed=seed,
        threads=site.threads,
        autocast_bf16=site.autocast_bf16,
        log_every=max(1, instructions.local_steps // 4),
    )
    moments = load_moments(site.moments_dir, instructions.server_round, model) if site.keep_moments else None
    result = train_private(
        model,
        train_rows.x0,
        diffusion=diffusion,
        train=train,
        privacy=round_privacy(site.privacy, instructions.server_round, site.name),
        ledger_path=site.ledger_path,
        proximal_mu=instructions.proximal_mu,
        anchor=state,
        progress=progress,
        moments=moments,
    )
    metrics: dict[str, int | float] = {
        "server-round": instructions.server_round,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "steps": result.steps,
    }
    if result.refused:
        metrics.update({"num-examples": 0, "refused": 1, "seconds": time.perf_counter() - start})
        return SiteRound(state=None, metrics=metrics, reason=result.reason or "refused")
    if moments is not None:
        save_moments(site.moments_dir, instructions.server_round, moments)
    metrics.update({"num-examples": result.num_examples, "refused": 0})
    if site.report_losses:
        if result.history:  # empty when every logged Poisson batch was empty
            last = result.history[-1]
            metrics.update({"loss": last.loss, "loss-image": last.image, "loss-text": last.text})
        metrics.update(
            modality_losses(
                model,
                data,
                diffusion=diffusion,
                seed=seed,
                rows=site.loss_rows,
                autocast_bf16=site.autocast_bf16,
            )
        )
    metrics["seconds"] = time.perf_counter() - start
    return SiteRound(state=trainable_state(model), metrics=metrics)
