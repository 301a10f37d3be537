"""Are findings still recognisable after a tokenizer round trip?

A domain classifier trained on the synthetic findings (``medim.metrics.domain``) labels each held-out image and its
reconstruction (encode -> decode); the agreement between the two label sets says how much of what matters
clinically survives the codes. CXR: multi-label findings; pathology: tissue type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medim.data.findings import CXR_FINDINGS
from medim.metrics.clinical import finding_accuracy
from medim.metrics.domain import DomainClassifier
from medim.tokenize.vq import VQTokenizer, to_modality
from medim.tokenize.vq_data import ImageSet, to_unit_range


@dataclass(frozen=True)
class RoundTripFindings:
    """Agreement of classifier labels on originals vs reconstructions: ``exact_match`` (same label set),
    ``label_accuracy`` (mean per-label agreement), ``micro_f1`` (reconstruction labels scored against the
    original's), over ``n`` images of one modality."""

    modality: str
    n: int
    exact_match: float
    label_accuracy: float
    micro_f1: float


@torch.no_grad()
def reconstruct(
    tokenizer: VQTokenizer, pixels: torch.Tensor, modality: str, batch_size: int = 64
) -> torch.Tensor:
    """uint8 [N, 3, R, R] -> reconstructions in [0, 1], [N, 1|3, R, R] (1 channel for CXR)."""
    tokenizer.eval()
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        images = to_unit_range(pixels[start : start + batch_size])
        decoded = to_modality(tokenizer.decode(tokenizer.encode(images)), modality)
        out.append((decoded + 1) / 2)
    return torch.cat(out)


@torch.no_grad()
def round_trip_findings(
    tokenizer: VQTokenizer, images: ImageSet, classifier: DomainClassifier
) -> RoundTripFindings:
    """Classifier labels of ``images`` (one modality, the classifier's) vs their reconstructions."""
    modality = classifier.spec.modality
    subset = images.select(modality)
    if len(subset) == 0:
        raise ValueError(f"no {modality} images to check")
    classifier.eval()
    originals = to_modality(subset.pixels.float() / 255.0, modality)
    before = classifier.predict(originals)
    after = classifier.predict(reconstruct(tokenizer, subset.pixels, modality))
    labels = CXR_FINDINGS if modality == "cxr" else classifier.spec.classes  # CXR predictions add no_finding
    agreement = finding_accuracy(before, after, labels)
    return RoundTripFindings(
        modality=modality,
        n=len(subset),
        exact_match=agreement.exact_match,
        label_accuracy=agreement.accuracy,
        micro_f1=agreement.scores.micro.f1,
    )
