"""Generation metrics of the global model on a fixed held-out subset (the first ``samples`` pairs of each set).

For each held-out set (``cxr`` = MIMIC-CXR style, ``pathology`` = PathGen style), with fixed sampler seeds:

- image->report: report metrics against the reference reports: BLEU-1..4, METEOR, ROUGE-L and CIDEr with the
  ``coco`` protocol when ``java`` is on PATH, else BLEU-1..4, METEOR (WordNet permitting) and ROUGE-L with the
  ``medim`` protocol (:mod:`medim.metrics.reports`); ``report_protocol`` says which;
- image->report: label F1 (micro/macro) of the generated reports' labels against the references' labels with
  the synthetic labeler of the set (``label_*``) and, for CXR, the CheXpert-14 rules (``chexpert_*``);
- report->image, at the last round only: FID (standard Inception-v3 pool3) and domain FID (our classifier,
  trained once per modality and cached in the workspace) against the tokenizer reconstructions of the held-out
  images. On a handful of samples both are strongly biased upwards: compare runs of equal ``samples`` only.

The last generations are kept as :class:`Samples` (PNG grid + JSON) for the run's report page.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medim.config import SamplerConfig, load_preset
from medim.evaluate import Generations, generate_both_ways
from medim.metrics.clinical import LABELERS, label_scores
from medim.metrics.domain import (
    DomainClassifier,
    DomainFeatures,
    DomainTrainConfig,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from medim.metrics.images import extract, frechet_distance
from medim.metrics.inception import FidInceptionV3
from medim.metrics.reports import JavaNotFoundError, coco_scores, medim_scores, require_java
from medim.model.medim import MeDiM
from medim.pipeline import config_hash
from medim.report import image_grid
from medim.tokenize.text import TextTokenizer
from medim.tokenize.vocab import Vocab
from medim.tokenize.vq import VQTokenizer, to_modality
from server.config import GenerationConfig

Metrics = dict[str, float | str | None]


@dataclass
class Samples:
    """One set's generations: reference reports, reports generated from the images, tokenizer reconstructions
    of the held-out images (``real``) and images generated from the reports (``fake``), uint8 [C, H, W]."""

    modality: str
    references: list[str]
    reports: list[str]
    real: torch.Tensor
    fake: torch.Tensor

    def save(self, folder: Path) -> None:
        """``folder/<modality>.png`` (top row real, bottom row generated) and ``folder/<modality>.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = [[_hwc(x) for x in self.real], [_hwc(x) for x in self.fake]]
        image_grid(rows).save(folder / f"{self.modality}.png")
        body = {"references": self.references, "reports": self.reports}
        (folder / f"{self.modality}.json").write_text(json.dumps(body, indent=2))


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (C=1) or [H, W, 3]."""
    arr = image.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def report_metrics(references: list[str], reports: list[str]) -> Metrics:
    """COCO-protocol report metrics with java, else the MeDiM protocol (``report_protocol`` names it)."""
    hyps = [r if r.strip() else "." for r in reports]  # the PTB tokenizer drops an empty line
    try:
        require_java()
    except JavaNotFoundError:
        medim = medim_scores(references, hyps)
        out: Metrics = {"report_protocol": "medim"}
        out.update({k: v for k, v in asdict(medim).items() if k != "unavailable"})
        return out
    return {"report_protocol": "coco", **asdict(coco_scores(references, hyps))}


def label_metrics(modality: str, references: list[str], reports: list[str]) -> Metrics:
    """Micro/macro label F1 of generated reports against the references (synthetic labeler; CheXpert for CXR)."""
    names = {"label": f"synthetic-{modality}"} | ({"chexpert": "chexpert-rules"} if modality == "cxr" else {})
    out: Metrics = {}
    for prefix, name in names.items():
        labeler = LABELERS[name]
        scores = label_scores(
            [labeler.extract(r) for r in references], [labeler.extract(h) for h in reports], labeler.labels
        )
        out[f"{prefix}_f1_micro"] = scores.micro.f1
        out[f"{prefix}_f1_macro"] = scores.macro.f1
    return out


@dataclass
class GenerationEval:
    """Computes generation metrics for one held-out set; classifiers are cached under ``cache``."""

    config: GenerationConfig
    vq: VQTokenizer
    text: TextTokenizer
    cache: Path
    seed: int = 0
    last: dict[str, Samples] = field(default_factory=dict)
    _domain: dict[str, DomainClassifier] = field(default_factory=dict)
    _inception: FidInceptionV3 | None = None

    @property
    def sampler(self) -> SamplerConfig:
        cfg = load_preset(SamplerConfig, "sampler", self.config.sampler)
        return SamplerConfig(**{**asdict(cfg), "steps": self.config.sampler_steps or cfg.steps})

    def due(self, server_round: int, last_round: int) -> bool:
        """Whether this round gets generation metrics: every ``every`` rounds and the last."""
        every = self.config.every
        return bool(every) and (server_round % every == 0 or server_round == last_round)

    def domain_classifier(self, modality: str) -> DomainClassifier:
        """The ``modality`` classifier from the cache, trained and saved there on first use."""
        if modality not in self._domain:
            train = DomainTrainConfig(modality=modality, steps=self.config.domain_steps, seed=self.seed)
            path = self.cache / f"{modality}-{config_hash(asdict(train))}.safetensors"
            if not path.is_file():
                save_domain_classifier(train_domain_classifier(train).classifier, path)
            self._domain[modality] = load_domain_classifier(path)
        return self._domain[modality]

    def image_metrics(self, modality: str, real: torch.Tensor, fake: torch.Tensor) -> Metrics:
        out: Metrics = {}
        if self.config.fid:
            self._inception = self._inception or FidInceptionV3()
            out["fid"] = frechet_distance(
                extract(self._inception, list(real)), extract(self._inception, list(fake))
            )
        if self.config.domain_fid:
            features = DomainFeatures(self.domain_classifier(modality))
            out["domain_fid"] = frechet_distance(extract(features, list(real)), extract(features, list(fake)))
        return out

    def __call__(self, model: MeDiM, modality: str, x0: torch.Tensor, *, final: bool) -> Metrics:
        """Metrics of ``model`` on the first ``samples`` rows of x0 [N, L] of the ``modality`` set."""
        picked = x0[: self.config.samples]
        gen = generate_both_ways(model, picked, sampler=self.sampler, seed=self.seed)
        return self.score(model.vocab, modality, gen, final=final)

    def score(
        self, vocab: Vocab, modality: str, gen: Generations, *, final: bool, text_metrics: bool = True
    ) -> Metrics:
        """Metrics of the generations ``gen`` conditioned on held-out pairs of the ``modality`` set (image metrics
        only when ``final``; ``text_metrics=False`` skips BLEU/METEOR/ROUGE-L/CIDEr, the Java scorers); keeps
        them in ``last``."""
        picked = gen.x0
        refs = [self.text.decode(vocab.text_ids(x)) for x in picked]
        hyps = [self.text.decode(vocab.text_ids(x)) for x in gen.reports_from_images]
        with torch.no_grad():
            real = _uint8(to_modality(self.vq.decode(vocab.image_codes(picked).clamp(min=0)), modality))
            codes = vocab.image_codes(gen.images_from_reports).clamp(min=0)
            fake = _uint8(to_modality(self.vq.decode(codes), modality))
        self.last[modality] = Samples(modality, refs, hyps, real, fake)
        out: Metrics = {"samples": float(picked.shape[0])}
        if text_metrics:
            out.update(report_metrics(refs, hyps))
        out.update(label_metrics(modality, refs, hyps))
        if final:
            out.update(self.image_metrics(modality, real, fake))
        return out
