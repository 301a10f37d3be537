"""The paper's key ablation: bidirectional vs causal attention, AdaLN time vs no time input, and per-layer AdaLN
vs adaLN-single. Every variant is the run's preset with :class:`Variant` overrides, built with the same seed and
trained centrally from scratch on the same sequences for the same steps, then evaluated on the held-out sets:
held-out loss per modality, label F1 of image->report generations, domain FID and finding accuracy of
report->image generations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from tqdm import tqdm

from experiments.classifiers import CachedClassifier, domain_classifier
from experiments.evaluation import (
    clinical_f1,
    decode_images,
    decode_reports,
    image_metrics,
    images_from_reports,
    reports_from_images,
)
from experiments.setup import (
    Configs,
    ExperimentData,
    RunSettings,
    load_data,
    prepare_workspace,
    train_central,
)
from medim.config import ModelConfig
from medim.evaluate import heldout_loss
from medim.model.factory import build_from_config
from medim.model.medim import MeDiM
from medim.tokenize.vq import VQTokenizer


@dataclass(frozen=True)
class Variant:
    """A named model variant: the attention mask and time conditioning set on top of the preset."""

    name: str
    description: str
    attention: str = "bidirectional"
    time_input: str = "adaln"
    adaln: str = "per_layer"

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with this variant's fields (validated by ModelConfig)."""
        return replace(cfg, attention=self.attention, time_input=self.time_input, adaln=self.adaln)

    def fields(self) -> dict[str, str]:
        return {"attention": self.attention, "time_input": self.time_input, "adaln": self.adaln}


VARIANTS = (
    Variant("medim", "MeDiM: bidirectional attention, AdaLN time conditioning (per layer)"),
    Variant("causal", "with causal mask", attention="causal"),
    Variant("no-time", "without time input", time_input="none"),
    Variant("adaln-single", "adaLN-single time modulation", adaln="single"),
)


def pick_variants(names: list[str] | None) -> list[Variant]:
    """The variants named (all when None), in :data:`VARIANTS` order; unknown names raise ValueError."""
    known = {v.name: v for v in VARIANTS}
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: allowed {list(known)}")
    return [v for v in VARIANTS if names is None or v.name in names]


def evaluate_variant(
    model: MeDiM,
    data: ExperimentData,
    vq: VQTokenizer,
    classifiers: dict[str, CachedClassifier],
    configs: Configs,
    settings: RunSettings,
) -> dict[str, Any]:
    """Held-out metrics per modality (see the module docstring); generations use the first ``samples`` rows."""
    results: dict[str, Any] = {}
    for modality, seqs in data.heldout.items():
        picked = seqs.x0[: settings.samples]
        references = decode_reports(model, picked)
        generated = reports_from_images(model, picked, configs.sampler, seed=settings.seed)
        fake = images_from_reports(model, picked, configs.sampler, seed=settings.seed)
        results[modality] = {
            "loss": asdict(heldout_loss(model, seqs.x0, diffusion=configs.diffusion, seed=settings.seed)),
            "image_to_report": clinical_f1(modality, references, generated),
            "report_to_image": image_metrics(
                classifiers[modality].classifier,
                modality,
                real=decode_images(model, vq, picked, modality),
                fake=decode_images(model, vq, fake, modality),
                reports=references,
            ),
            "examples": [
                {"reference": r, "generated": g} for r, g in list(zip(references, generated, strict=True))[:3]
            ],
        }
    return results


def run_ablation(settings: RunSettings, variants: list[Variant]) -> dict[str, Any]:
    """Train and evaluate each variant; returns the results object (``results.json``)."""
    configs = Configs.of(settings)
    ws = prepare_workspace(settings)
    data = load_data(ws, build_from_config(configs.model))
    vq = ws.load_vq()
    classifiers = {
        m: domain_classifier(m, settings.classifier_dir, steps=settings.classifier_steps, seed=settings.seed)
        for m in data.heldout
    }
    results: dict[str, Any] = {}
    for variant in tqdm(variants, desc="variants", disable=not settings.progress):
        model_cfg = variant.apply(configs.model)
        trained = train_central(
            model_cfg, data.train.x0, configs, progress=settings.progress, desc=variant.name
        )
        results[variant.name] = {
            "description": variant.description,
            "model": variant.fields(),
            "train": trained.summary(),
            "heldout": evaluate_variant(trained.model, data, vq, classifiers, configs, settings),
        }
    return {
        "experiment": "ablation",
        "settings": settings.to_dict(),
        "configs": configs.to_dict(),
        "data": {
            "train_sequences": len(data.train),
            "heldout_sequences": {m: len(s) for m, s in data.heldout.items()},
            "generated_per_modality": {m: min(settings.samples, len(s)) for m, s in data.heldout.items()},
        },
        "classifiers": {
            m: {"path": str(c.path), "accuracy_on_synthetic_draws": c.accuracy}
            for m, c in classifiers.items()
        },
        "variants": results,
    }
