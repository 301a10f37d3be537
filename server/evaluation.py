"""Global evaluation of the aggregated model on the coordinator's held-out sets (MIMIC-CXR, PathGen).

Per held-out set: the joint-task diffusion loss (and its image/text parts) on a fixed time grid with a fixed seed
(:func:`medim.evaluate.heldout_loss`), so values are comparable across rounds and runs; and, every
``fl.generation.every`` rounds and at the last, generation metrics on a fixed subset (:mod:`server.generation`:
report metrics, label F1, and at the last round FID / domain FID). Further metrics plug in as hooks: callables
``(model, round) -> {name: value}`` whose results are stored under ``extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medim.config import DiffusionConfig
from medim.evaluate import heldout_loss
from medim.model.factory import text_tokenizer
from medim.model.lora import apply_lora, load_trainable_state
from medim.model.medim import MeDiM
from medim.pipeline import Workspace
from server.config import FLConfig
from server.generation import GenerationEval, Metrics

EvalHook = Callable[[MeDiM, int], dict[str, float]]
DOMAIN_CACHE = "domain-classifiers"


@dataclass
class GlobalEval:
    """``losses``: {set: {"loss", "image", "text", "n"}}; ``metrics``: {set: generation metrics} (rounds with
    generation only); ``extra``: what the hooks returned."""

    round: int
    losses: dict[str, dict[str, float]]
    metrics: dict[str, Metrics] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """``eval cxr=6.1234 pathology=5.4321`` (+ `` f1 cxr=0.41 ...`` with generation) for progress output."""
        text = "eval " + " ".join(f"{m}={v['loss']:.4f}" for m, v in self.losses.items())
        f1 = {m: v.get("label_f1_micro") for m, v in self.metrics.items()}
        if f1:
            text += "  f1 " + " ".join(f"{m}={v:.2f}" for m, v in f1.items() if isinstance(v, float))
        return text


@dataclass
class Evaluator:
    """Evaluates trainable states on fixed held-out sequences ({set: LongTensor [N, L]}) with ``model``;
    ``generation`` (None = losses only) adds generation metrics on rounds it is due, FID at ``last_round``."""

    model: MeDiM
    heldout: dict[str, torch.Tensor]
    diffusion: DiffusionConfig
    seed: int = 0
    autocast_bf16: bool = True
    hooks: Sequence[EvalHook] = ()
    generation: GenerationEval | None = None
    last_round: int = 0

    def __call__(self, server_round: int, trainable: dict[str, np.ndarray]) -> GlobalEval:
        load_trainable_state(self.model, {k: torch.from_numpy(np.array(v)) for k, v in trainable.items()})
        losses = {}
        for modality, x0 in sorted(self.heldout.items()):
            loss = heldout_loss(
                self.model, x0, diffusion=self.diffusion, seed=self.seed, autocast_bf16=self.autocast_bf16
            )
            losses[modality] = {"loss": loss.loss, "image": loss.image, "text": loss.text, "n": float(loss.n)}
        metrics: dict[str, Metrics] = {}
        gen = self.generation
        if gen is not None and gen.due(server_round, self.last_round):
            final = server_round == self.last_round
            for modality, x0 in sorted(self.heldout.items()):
                metrics[modality] = gen(self.model, modality, x0, final=final)
        extra: dict[str, float] = {}
        for hook in self.hooks:
            extra.update(hook(self.model, server_round))
        return GlobalEval(round=server_round, losses=losses, metrics=metrics, extra=extra)


def build_evaluator(
    ws: Workspace, fl: FLConfig, diffusion: DiffusionConfig, *, hooks: Sequence[EvalHook] = ()
) -> Evaluator:
    """The coordinator's evaluator: the workspace's base model with LoRA (seeded by ``fl.seed``), the first
    ``fl.eval_rows`` rows of each held-out set, generation metrics per ``fl.generation``."""
    model = ws.load_base()
    torch.manual_seed(fl.seed)
    apply_lora(model)
    rows = fl.eval_rows or None
    heldout = {m: ws.sequences([folder], model).x0[:rows] for m, folder in sorted(ws.heldout.items())}
    generation = None
    if fl.generation.every:
        generation = GenerationEval(
            fl.generation, ws.load_vq(), text_tokenizer(model.cfg), Path(ws.root) / DOMAIN_CACHE, seed=fl.seed
        )
    return Evaluator(
        model, heldout, diffusion, seed=fl.seed, hooks=hooks, generation=generation, last_round=fl.rounds
    )
