"""Our domain classifier: a small CNN trained on synthetic images with known findings (not a published model).

Two kinds, one per modality:

- ``cxr``: multi-label findings of a frontal chest X-ray (:data:`CXR_CLASSES`, sigmoid outputs);
- ``pathology``: tissue type of an H&E patch (:data:`medim.data.findings.TISSUE_TYPES`, softmax outputs).

It serves three metrics: the *domain FID* (Fréchet distance in its penultimate feature space; ours, not
comparable to published FIDs), a *domain Inception Score* over the tissue softmax (pathology only) and the
finding accuracy of generated images given their prompt (:mod:`medim.metrics.clinical`).

Training images are drawn in memory by the synthetic generators (:func:`medim.data.synth_cxr.draw_cxr`,
:func:`medim.data.synth_pathology.draw_patch`) with mild intensity augmentation; weights are saved as
safetensors with the spec in the metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from medim.data import findings as FN
from medim.data.synth_cxr import draw_cxr, sample_case
from medim.data.synth_pathology import draw_patch, sample_patch_case
from medim.metrics.inception import to_uint8_rgb

CXR_CLASSES = tuple(name for name in FN.CXR_FINDINGS if name != FN.NO_FINDING)
"""Findings predicted for a chest X-ray (``no_finding`` follows from the absence of the pathologies)."""
MODALITIES = ("cxr", "pathology")
FORMAT = "medim-domain-classifier/1"


@dataclass(frozen=True)
class DomainSpec:
    """What a domain classifier sees and predicts. ``channels`` 1 (CXR) or 3 (pathology)."""

    modality: str
    classes: tuple[str, ...]
    multilabel: bool
    channels: int
    image_size: int = 64
    width: int = 32

    @staticmethod
    def for_modality(modality: str, *, image_size: int = 64, width: int = 32) -> DomainSpec:
        """The spec of the ``cxr`` or ``pathology`` classifier."""
        if modality == "cxr":
            return DomainSpec("cxr", CXR_CLASSES, True, 1, image_size, width)
        if modality == "pathology":
            return DomainSpec("pathology", FN.TISSUE_TYPES, False, 3, image_size, width)
        raise ValueError(f"modality={modality!r} is invalid: allowed {MODALITIES}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(), nn.MaxPool2d(2)
    )


class DomainClassifier(nn.Module):
    """Four conv blocks + global average pooling -> ``num_features``-d features -> class logits."""

    def __init__(self, spec: DomainSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        self.trunk = nn.Sequential(
            _block(spec.channels, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w)
        )
        self.head = nn.Linear(4 * w, len(spec.classes))

    @property
    def num_features(self) -> int:
        """Dimension of :meth:`features`."""
        return 4 * self.spec.width

    def prepare(self, images: Tensor) -> Tensor:
        """(N, 1|3, H, W) uint8 or float [0, 1] -> normalised float (N, channels, image_size, image_size)."""
        x = to_uint8_rgb(images).float() / 255.0
        if self.spec.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        size = (self.spec.image_size, self.spec.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - 0.5) / 0.25

    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images -> penultimate features (N, num_features)."""
        device = self.head.weight.device
        return self.trunk(self.prepare(images).to(device)).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images -> logits (N, len(classes))."""
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: Tensor, threshold: float = 0.5) -> list[set[str]]:
        """Predicted class names per image: sigmoid > threshold (multi-label) or the arg-max (single label).

        CXR sets follow :data:`medim.data.findings.CXR_FINDINGS`: ``no_finding`` is added when no pathology is
        predicted, so they compare directly with :func:`medim.data.findings.extract_cxr_findings`.
        """
        logits = self(images)
        if self.spec.multilabel:
            hits = logits.sigmoid() > threshold
            found = [{self.spec.classes[k] for k in row.nonzero().flatten().tolist()} for row in hits]
            return [s if s & set(FN.CXR_PATHOLOGIES) else s | {FN.NO_FINDING} for s in found]
        return [{self.spec.classes[k]} for k in logits.argmax(dim=1).tolist()]


class DomainFeatures(nn.Module):
    """The classifier's penultimate layer as a frozen feature extractor (for torchmetrics' FID)."""

    def __init__(self, classifier: DomainClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


@dataclass(frozen=True)
class SyntheticBatch:
    """Drawn images (N, C, S, S) uint8 and targets (N, K) float (multi-hot or one-hot)."""

    images: Tensor
    targets: Tensor


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma and contrast on a [0, 1] image, like differing display windows."""
    gamma = float(rng.uniform(0.7, 1.4))
    low, high = float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.92, 1.0))
    return np.clip((image**gamma - low) / (high - low), 0.0, 1.0)


def draw_synthetic(
    spec: DomainSpec, count: int, rng: np.random.Generator, draw_size: int = 128
) -> SyntheticBatch:
    """Draw ``count`` labelled training images for ``spec`` at ``draw_size`` pixels."""
    images: list[np.ndarray] = []
    targets = torch.zeros(count, len(spec.classes))
    if spec.modality == "cxr":
        prevalence = dict.fromkeys(spec.classes, 0.3)
        for i in range(count):
            case = sample_case(rng, prevalence)
            view = str(rng.choice(["PA", "AP"]))
            image = _augment(draw_cxr(case, view=view, rows=draw_size, cols=draw_size, rng=rng), rng)
            images.append((image * 255).round().astype(np.uint8)[None])
            for name in case.findings & set(spec.classes):
                targets[i, spec.classes.index(name)] = 1.0
    else:
        mix = dict.fromkeys(spec.classes, 1.0)
        for i in range(count):
            patch_case = sample_patch_case(rng, mix)
            images.append(draw_patch(patch_case, size=draw_size, rng=rng).transpose(2, 0, 1))
            targets[i, spec.classes.index(patch_case.tissue)] = 1.0
    return SyntheticBatch(torch.from_numpy(np.stack(images)), targets)


@dataclass(frozen=True)
class DomainTrainConfig:
    """Training of a domain classifier on freshly drawn synthetic images (one new batch per step)."""

    modality: str = "cxr"
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    draw_size: int = 128
    image_size: int = 64
    width: int = 32
    seed: int = 0


@dataclass(frozen=True)
class DomainTrainResult:
    """A trained classifier, its loss per step, and its accuracy on a fresh held-out draw.

    ``accuracy``: per-label accuracy averaged over labels (multi-label) or top-1 accuracy (single label).
    """

    classifier: DomainClassifier
    losses: list[float]
    accuracy: float


def _loss(spec: DomainSpec, logits: Tensor, targets: Tensor) -> Tensor:
    if spec.multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets.argmax(dim=1))


@torch.no_grad()
def evaluate_accuracy(classifier: DomainClassifier, batch: SyntheticBatch) -> float:
    """Accuracy of ``classifier`` on ``batch`` (see :class:`DomainTrainResult`)."""
    classifier.eval()
    logits = classifier(batch.images)
    if classifier.spec.multilabel:
        return float(((logits.sigmoid() > 0.5).float() == batch.targets).float().mean())
    return float((logits.argmax(dim=1) == batch.targets.argmax(dim=1)).float().mean())


def train_domain_classifier(config: DomainTrainConfig, eval_count: int = 128) -> DomainTrainResult:
    """Train a classifier for ``config.modality`` on synthetic draws; evaluate on ``eval_count`` fresh ones."""
    spec = DomainSpec.for_modality(config.modality, image_size=config.image_size, width=config.width)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    classifier = DomainClassifier(spec)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.steps, 1))
    losses: list[float] = []
    classifier.train()
    for _ in range(config.steps):
        batch = draw_synthetic(spec, config.batch_size, rng, config.draw_size)
        loss = _loss(spec, classifier(batch.images), batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    held_out = draw_synthetic(spec, eval_count, np.random.default_rng(config.seed + 1), config.draw_size)
    return DomainTrainResult(classifier.eval(), losses, evaluate_accuracy(classifier, held_out))


def save_domain_classifier(classifier: DomainClassifier, path: Path) -> None:
    """Write weights and spec to a safetensors file."""
    spec = asdict(classifier.spec)
    metadata = {"format": FORMAT, "spec": json.dumps(spec)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path), metadata=metadata)


def load_domain_classifier(path: Path) -> DomainClassifier:
    """Read a classifier written by :func:`save_domain_classifier` (eval mode, on CPU)."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"domain classifier {path} not found")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a medim domain classifier (format {metadata.get('format')!r})")
    raw = json.loads(metadata["spec"])
    spec = DomainSpec(**{**raw, "classes": tuple(raw["classes"])})
    classifier = DomainClassifier(spec)
    classifier.load_state_dict(load_file(str(path)))
    return classifier.eval()
