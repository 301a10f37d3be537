"""Global evaluation of the aggregated model on the coordinator's held-out sets (MIMIC-CXR, PathGen).

Per modality: the joint-task diffusion loss (and its image/text parts) on a fixed time grid with a fixed seed
(:func:`medim.evaluate.heldout_loss`), so values are comparable across rounds and runs. Generation metrics plug in
as hooks: callables ``(model, round) -> {name: value}`` whose results are stored under ``extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medim.config import DiffusionConfig
from medim.evaluate import heldout_loss
from medim.model.lora import load_trainable_state
from medim.model.medim import MeDiM

EvalHook = Callable[[MeDiM, int], dict[str, float]]


@dataclass
class GlobalEval:
    """``losses``: {modality: {"loss", "image", "text", "n"}}; ``extra``: what the hooks returned."""

    round: int
    losses: dict[str, dict[str, float]]
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """``eval cxr=6.1234 pathology=5.4321`` for progress output."""
        return "eval " + " ".join(f"{m}={v['loss']:.4f}" for m, v in self.losses.items())


@dataclass
class Evaluator:
    """Evaluates trainable states on fixed held-out sequences ({modality: LongTensor [N, L]}) with ``model``."""

    model: MeDiM
    heldout: dict[str, torch.Tensor]
    diffusion: DiffusionConfig
    seed: int = 0
    autocast_bf16: bool = True
    hooks: Sequence[EvalHook] = ()

    def __call__(self, server_round: int, trainable: dict[str, np.ndarray]) -> GlobalEval:
        load_trainable_state(self.model, {k: torch.from_numpy(np.array(v)) for k, v in trainable.items()})
        losses = {}
        for modality, x0 in sorted(self.heldout.items()):
            loss = heldout_loss(
                self.model, x0, diffusion=self.diffusion, seed=self.seed, autocast_bf16=self.autocast_bf16
            )
            losses[modality] = {"loss": loss.loss, "image": loss.image, "text": loss.text, "n": float(loss.n)}
        extra: dict[str, float] = {}
        for hook in self.hooks:
            extra.update(hook(self.model, server_round))
        return GlobalEval(round=server_round, losses=losses, extra=extra)
