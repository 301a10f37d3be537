"""Held-out evaluation of a trained model for the experiments.

- image->report: reports sampled from held-out images, scored against the references (as the model sees them:
  tokenized, lower-cased, truncated to the text region) with the modality's synthetic labeler (label F1) and,
  for the downstream study, BLEU/METEOR/ROUGE-L;
- report->image: images sampled from held-out reports, compared with the tokenizer's reconstructions of the
  held-out images in our domain classifier's feature space (domain FID; ours, not comparable to published FIDs)
  and checked against the findings the report states (finding accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from medim.cli import finding_agreement
from medim.config import SamplerConfig
from medim.data import findings as F
from medim.metrics.clinical import finding_accuracy
from medim.metrics.domain import DomainClassifier
from medim.metrics.images import frechet_distance
from medim.metrics.reports import JavaNotFoundError, coco_scores, medim_scores, require_java
from medim.model.factory import text_tokenizer
from medim.model.medim import MeDiM
from medim.sampling import image_to_text_prompt, sample, text_to_image_prompt
from medim.tokenize.vq import VQTokenizer, to_modality


def decode_reports(model: MeDiM, x: torch.Tensor) -> list[str]:
    """The text region of each row of x [B, L], decoded (up to the first ``<eos>``)."""
    text = text_tokenizer(model.cfg)
    return [text.decode(model.vocab.text_ids(row)) for row in x]


def decode_images(model: MeDiM, vq: VQTokenizer, x: torch.Tensor, modality: str) -> torch.Tensor:
    """The image region of each row of x [B, L] decoded by ``vq``: uint8 [B, C, H, W] (C=1 for ``cxr``)."""
    images = to_modality(vq.decode(model.vocab.image_codes(x)), modality)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def reports_from_images(
    model: MeDiM, x0: torch.Tensor, sampler: SamplerConfig, *, seed: int, batch_size: int = 16
) -> list[str]:
    """Reports sampled for the images of x0 [B, L] (batch ``i`` seeded ``seed + i``)."""
    model.eval()
    out: list[str] = []
    for i, start in enumerate(range(0, x0.shape[0], batch_size)):
        prompt = image_to_text_prompt(model.vocab, x0[start : start + batch_size])
        generated = sample(model, prompt, sampler, generator=torch.Generator().manual_seed(seed + i))
        out += decode_reports(model, generated)
    return out


@torch.no_grad()
def images_from_reports(
    model: MeDiM, x0: torch.Tensor, sampler: SamplerConfig, *, seed: int, batch_size: int = 16
) -> torch.Tensor:
    """Sequences [B, L] whose image region was sampled for the reports of x0 [B, L]."""
    model.eval()
    parts = []
    for i, start in enumerate(range(0, x0.shape[0], batch_size)):
        prompt = text_to_image_prompt(model.vocab, x0[start : start + batch_size])
        parts.append(sample(model, prompt, sampler, generator=torch.Generator().manual_seed(seed + i)))
    return torch.cat(parts)


def stated_findings(modality: str, report: str) -> set[str]:
    """What a report says the image shows, in the domain classifier's label space: the synthetic CXR findings,
    or the pathology tissue type (empty when the caption names none)."""
    if modality == "cxr":
        return F.extract_cxr_findings(report)
    tissue = F.extract_pathology_findings(report)["tissue"]
    return {tissue} if tissue else set()


def classifier_labels(modality: str) -> tuple[str, ...]:
    """The label names of :func:`stated_findings` and of the classifier's predictions for ``modality``."""
    return F.CXR_FINDINGS if modality == "cxr" else F.TISSUE_TYPES


@torch.no_grad()
def image_metrics(
    classifier: DomainClassifier,
    modality: str,
    *,
    real: torch.Tensor,
    fake: torch.Tensor,
    reports: Sequence[str],
) -> dict[str, Any]:
    """Domain FID of generated images ``fake`` against ``real`` (uint8 [B, C, H, W] each) and the finding
    accuracy of ``fake`` (and, as the ceiling of this measurement, of ``real``) given the ``reports``."""
    labels = classifier_labels(modality)
    stated = [stated_findings(modality, r) for r in reports]
    generated = finding_accuracy(stated, classifier.predict(fake), labels)
    reference = finding_accuracy(stated, classifier.predict(real), labels)
    return {
        "domain_fid": frechet_distance(classifier.features(real), classifier.features(fake)),
        "finding_accuracy": generated.accuracy,
        "finding_exact_match": generated.exact_match,
        "finding_micro_f1": generated.scores.micro.f1,
        "reference_finding_accuracy": reference.accuracy,
        "reference_finding_exact_match": reference.exact_match,
        "n": len(reports),
    }


def report_text_metrics(references: Sequence[str], generated: Sequence[str]) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L of generated reports: the ``coco`` protocol (pycocoevalcap, corpus-level) when
    ``java`` is on PATH, else the ``medim`` protocol (NLTK, per report); ``protocol`` says which, ``unavailable``
    why a value is null."""
    try:
        require_java()
    except JavaNotFoundError as error:
        medim = medim_scores(references, generated)
        values = {k: v for k, v in asdict(medim).items() if k != "unavailable"}
        return {"protocol": "medim", **values, "unavailable": {"coco": str(error)} | medim.unavailable}
    return {"protocol": "coco", **asdict(coco_scores(references, generated)), "unavailable": {}}


def clinical_f1(modality: str, references: Sequence[str], generated: Sequence[str]) -> dict[str, Any]:
    """Micro/macro label F1 of generated reports against the references (the modality's synthetic labeler)."""
    return finding_agreement(modality, list(references), list(generated))
