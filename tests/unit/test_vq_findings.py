"""Round-trip finding check of the image tokenizer with a (tiny, quickly trained) domain classifier."""

import numpy as np
import pytest
import torch

from medim.config import load_preset
from medim.metrics.domain import DomainSpec, DomainTrainConfig, draw_synthetic, train_domain_classifier
from medim.tokenize.vq import VQTokenizer
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_data import ImageSet
from medim.tokenize.vq_findings import reconstruct, round_trip_findings


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    trained = train_domain_classifier(
        DomainTrainConfig(modality="pathology", steps=30, batch_size=16, width=8)
    )
    spec = DomainSpec.for_modality("pathology")
    drawn = draw_synthetic(spec, 12, np.random.default_rng(1), draw_size=32)
    images = ImageSet(ids=[str(i) for i in range(12)], modalities=["pathology"] * 12, pixels=drawn.images)
    tokenizer = VQTokenizer(load_preset(TokenizerConfig, "tokenizer", "tiny"))
    return trained.classifier, images, tokenizer


def test_reconstruct_shapes_and_range(setup):
    _, images, tokenizer = setup
    out = reconstruct(tokenizer, images.pixels, "pathology", batch_size=5)
    assert out.shape == (12, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    gray = reconstruct(tokenizer, images.pixels[:2], "cxr")
    assert gray.shape == (2, 1, 32, 32)


def test_round_trip_agreement_is_measured_against_the_originals(setup):
    classifier, images, tokenizer = setup
    found = round_trip_findings(tokenizer, images, classifier)
    assert found.modality == "pathology" and found.n == 12
    before = classifier.predict(images.pixels.float() / 255)
    after = classifier.predict(reconstruct(tokenizer, images.pixels, "pathology"))
    assert found.exact_match == pytest.approx(np.mean([a == b for a, b in zip(before, after, strict=True)]))
    assert 0 <= found.label_accuracy <= 1 and 0 <= found.micro_f1 <= 1


def test_no_images_of_the_modality_is_an_error(setup):
    classifier, images, tokenizer = setup
    cxr_only = ImageSet(ids=images.ids, modalities=["cxr"] * 12, pixels=images.pixels)
    with pytest.raises(ValueError, match="no pathology images"):
        round_trip_findings(tokenizer, cxr_only, classifier)
