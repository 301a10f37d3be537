"""Domain classifiers for the image metrics, trained once per (modality, steps, seed) and cached on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medim.metrics.domain import (
    DomainClassifier,
    DomainTrainConfig,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)


@dataclass
class CachedClassifier:
    """A domain classifier, its file, and its accuracy on fresh synthetic draws when it was trained."""

    classifier: DomainClassifier
    path: Path
    accuracy: float


def domain_classifier(
    modality: str, cache_dir: Path, *, steps: int, seed: int, eval_count: int = 128
) -> CachedClassifier:
    """The ``modality`` classifier from ``cache_dir`` (``<modality>-steps<steps>-seed<seed>.safetensors`` +
    ``.json``), trained with :func:`medim.metrics.domain.train_domain_classifier` (accuracy on ``eval_count``
    fresh draws) and saved first if missing."""
    path = cache_dir / f"{modality}-steps{steps}-seed{seed}.safetensors"
    info = path.with_suffix(".json")
    if path.is_file() and info.is_file():
        return CachedClassifier(
            load_domain_classifier(path), path, float(json.loads(info.read_text())["accuracy"])
        )
    config = DomainTrainConfig(modality=modality, steps=steps, seed=seed)
    result = train_domain_classifier(config, eval_count=eval_count)
    save_domain_classifier(result.classifier, path)
    record = {"modality": modality, "steps": steps, "seed": seed, "accuracy": result.accuracy}
    info.write_text(json.dumps(record | {"eval_count": eval_count}))
    return CachedClassifier(result.classifier, path, result.accuracy)
