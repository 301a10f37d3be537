"""What every experiment starts from: run settings, the workspace's sequences, and central training of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medim.config import DiffusionConfig, ModelConfig, SamplerConfig, TrainConfig, load_preset
from medim.data.sequences import SequenceSet
from medim.model.factory import build_from_config
from medim.model.medim import MeDiM
from medim.pipeline import Workspace, bootstrap
from medim.train import TrainResult, train_local


@dataclass(frozen=True)
class RunSettings:
    """Settings shared by the experiments (everything that determines their numbers, with the seed).

    ``samples``: held-out pairs generated per modality and direction; ``sampler_steps``: MaskGIT steps
    (None: the ``default`` sampler preset's); ``classifier_steps``: training steps of the domain classifiers;
    ``threads``: torch CPU threads while training (0: all cores).
    """

    preset: str
    steps: int
    seed: int
    samples: int
    scale: float
    workspace: Path
    classifier_dir: Path
    classifier_steps: int = 400
    sampler_steps: int | None = None
    threads: int = 1
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Configs:
    """The configs a run trains and samples with (the preset's, ``steps``/``seed`` overridden, no time limit,
    so that every model of a run takes exactly the same steps)."""

    model: ModelConfig
    train: TrainConfig
    diffusion: DiffusionConfig
    sampler: SamplerConfig

    @staticmethod
    def of(settings: RunSettings) -> Configs:
        sampler_overrides = {} if settings.sampler_steps is None else {"steps": settings.sampler_steps}
        return Configs(
            model=load_preset(ModelConfig, "model", settings.preset),
            train=load_preset(
                TrainConfig,
                "train",
                settings.preset,
                steps=settings.steps,
                seed=settings.seed,
                max_minutes=0.0,
            ),
            diffusion=load_preset(DiffusionConfig, "diffusion", "default"),
            sampler=load_preset(SamplerConfig, "sampler", "default", **sampler_overrides),
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: asdict(getattr(self, name)) for name in ("model", "train", "diffusion", "sampler")}


@dataclass
class ExperimentData:
    """Clean sequences [N, L] of a workspace for one vocabulary: the training pool (public + every site, split
    ``train``) and each held-out modality (all of its rows)."""

    workspace: Workspace
    train: SequenceSet
    heldout: dict[str, SequenceSet]


def prepare_workspace(settings: RunSettings) -> Workspace:
    """Bootstrap (or re-use) the workspace: synthetic hospitals, prepared folders, image tokenizer, base model."""
    return bootstrap(
        settings.workspace,
        preset=settings.preset,
        seed=settings.seed,
        synth_scale=settings.scale,
        progress=settings.progress,
    )


def load_data(ws: Workspace, model: MeDiM) -> ExperimentData:
    """The training pool and held-out sets of ``ws`` as sequences for ``model``'s vocabulary."""
    folders = ws.public + [folder for site in sorted(ws.sites) for folder in ws.sites[site]]
    train = ws.sequences(folders, model).select(splits=["train"])
    heldout = {modality: ws.sequences([folder], model) for modality, folder in sorted(ws.heldout.items())}
    return ExperimentData(workspace=ws, train=train, heldout=heldout)


@dataclass
class TrainedModel:
    """A model trained centrally from scratch, and what its training did."""

    model: MeDiM
    result: TrainResult

    def summary(self) -> dict[str, Any]:
        """Steps, wall time, throughput, first and final logged loss, parameter count."""
        history = self.result.history
        return {
            "steps": self.result.steps,
            "seconds": self.result.seconds,
            "tokens_per_second": self.result.tokens_per_second,
            "first_loss": history[0].loss if history else None,
            "final_loss": history[-1].loss if history else None,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def train_central(
    model_cfg: ModelConfig, x0: torch.Tensor, configs: Configs, *, progress: bool, desc: str = "train"
) -> TrainedModel:
    """Build ``model_cfg`` with the run's seed and train every parameter on x0 [N, L] for
    ``configs.train.steps`` steps."""
    model = build_from_config(model_cfg, seed=configs.train.seed)
    if progress:
        print(f"{desc}: {x0.shape[0]} sequences, {configs.train.steps} steps", flush=True)
    result = train_local(model, x0, diffusion=configs.diffusion, train=configs.train, progress=progress)
    return TrainedModel(model=model, result=result)
