"""Image metrics: the offline FID Inception-v3, FID/IS numbers, our domain classifier, and the images CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medim.data import findings as F
from medim.data.synth_cxr import draw_cxr, sample_case
from medim.data.synth_pathology import draw_patch, sample_patch_case
from medim.metrics import cli
from medim.metrics.domain import (
    DomainClassifier,
    DomainSpec,
    DomainTrainConfig,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from medim.metrics.images import batches, extract, frechet_distance, inception_score, load_png_folder
from medim.metrics.inception import FEATURES, IS_UNAVAILABLE, FidInceptionV3

IMAGES_KEYS = {"fid", "is_mean", "is_std", "n_real", "n_fake", "unavailable"}
DOMAIN_KEYS = {"domain_fid", "domain_is_mean", "domain_is_std"}


def _cxrs(count: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    prevalence = dict.fromkeys(F.CXR_PATHOLOGIES, 0.3)
    drawn = [
        draw_cxr(sample_case(rng, prevalence), view="PA", rows=96, cols=96, rng=rng) for _ in range(count)
    ]
    return [torch.from_numpy(np.rint(image * 255).astype(np.uint8))[None] for image in drawn]


def _patches(count: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    mix = dict.fromkeys(F.TISSUE_TYPES, 1.0)
    return [
        torch.from_numpy(draw_patch(sample_patch_case(rng, mix), size=96, rng=rng).transpose(2, 0, 1).copy())
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def inception():
    return FidInceptionV3()


@pytest.fixture(scope="module")
def features(inception):
    return {"cxr": extract(inception, _cxrs(4, 0)), "pathology": extract(inception, _patches(4, 0))}


def test_inception_gives_pool3_features(features):
    cxr = features["cxr"]
    assert cxr.shape == (4, FEATURES) and cxr.dtype == torch.float32
    assert torch.isfinite(cxr).all() and (cxr >= 0).all()  # average pool of ReLU outputs
    assert cxr.std(dim=0).mean() > 0


def test_grayscale_equals_repeated_rgb(inception):
    gray = _cxrs(1, 3)[0][None]
    assert torch.allclose(inception(gray), inception(gray.repeat(1, 3, 1, 1)))


def test_fid_of_a_set_with_itself_is_zero_and_of_different_sets_positive(features):
    same = frechet_distance(features["cxr"], features["cxr"])
    other = frechet_distance(features["cxr"], features["pathology"])
    assert abs(same) < 1e-3
    assert other > 100 * max(abs(same), 1e-3)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # identical covariances: FID reduces to the squared distance of the means
    base = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    shifted = base + torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert frechet_distance(base, shifted) == pytest.approx(25.0, abs=1e-6)


@pytest.mark.parametrize(("n", "m", "d"), [(5, 7, 16), (40, 30, 8)])
def test_frechet_distance_agrees_with_torchmetrics(n, m, d):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = torch.randn(n, d, dtype=torch.float64), torch.randn(m, d, dtype=torch.float64) * 1.5 + 0.3

    class Given(torch.nn.Module):
        num_features = d

        def forward(self, x):
            return x

    metric = FrechetInceptionDistance(feature=Given())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-6, abs=1e-8)


def test_inception_score_bounds():
    uniform = inception_score(torch.zeros(40, 5), splits=10)
    assert uniform.mean == pytest.approx(1.0, abs=1e-6)
    confident = torch.full((40, 5), -30.0)
    confident[torch.arange(40), torch.arange(40) % 5] = 30.0
    assert inception_score(confident, splits=1).mean == pytest.approx(5.0, rel=1e-4)
    assert 1.0 <= inception_score(confident, splits=10).mean <= 5.0  # splits of 4 cannot cover 5 classes
    mixed = inception_score(torch.randn(40, 5) * 2, splits=10)
    assert 1.0 <= mixed.mean <= 5.0 and mixed.std >= 0


def test_batches_group_equal_shapes():
    images = [torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)]
    assert [tuple(b.shape) for b in batches(images, 3)] == [(2, 1, 8, 8), (2, 3, 8, 8)]


@pytest.fixture(scope="module")
def tiny_pathology_classifier():
    config = DomainTrainConfig(
        modality="pathology", steps=25, batch_size=16, draw_size=64, image_size=32, width=8
    )
    return train_domain_classifier(config, eval_count=40)


def test_tiny_domain_classifier_trains_and_round_trips(tiny_pathology_classifier, tmp_path):
    result = tiny_pathology_classifier
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert result.accuracy > 0.3  # five balanced tissue types: chance is 0.2
    path = tmp_path / "pathology.safetensors"
    save_domain_classifier(result.classifier, path)
    loaded = load_domain_classifier(path)
    assert loaded.spec == result.classifier.spec
    patches = torch.stack(_patches(3, 5))
    assert torch.allclose(loaded(patches), result.classifier(patches))
    assert all(len(s) == 1 and s <= set(F.TISSUE_TYPES) for s in loaded.predict(patches))


def test_cxr_classifier_predicts_canonical_sets():
    classifier = DomainClassifier(DomainSpec.for_modality("cxr", image_size=32, width=8)).eval()
    predicted = classifier.predict(torch.stack(_cxrs(2, 1)), threshold=1.1)  # nothing passes: no finding
    assert predicted == [{F.NO_FINDING}, {F.NO_FINDING}]


def test_loading_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not a medim domain classifier"):
        load_domain_classifier(path)


def _write_pngs(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        array = image.numpy()
        Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(
            folder / f"{i}.png"
        )


def test_png_folder_round_trip(tmp_path):
    images = _cxrs(2, 4) + _patches(1, 4)
    _write_pngs(tmp_path / "x", images)
    loaded = load_png_folder(tmp_path / "x")
    assert all(torch.equal(a, b) for a, b in zip(loaded, images, strict=True))


def test_cli_images_prints_documented_keys(tmp_path, capsys, tiny_pathology_classifier):
    _write_pngs(tmp_path / "real", _patches(3, 10))
    _write_pngs(tmp_path / "fake", _patches(3, 11))
    classifier = tmp_path / "c.safetensors"
    save_domain_classifier(tiny_pathology_classifier.classifier, classifier)
    argv = ["images", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake")]
    assert cli.main([*argv, "--domain-classifier", str(classifier)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == IMAGES_KEYS | DOMAIN_KEYS
    assert out["fid"] > 0 and out["domain_fid"] >= 0 and (out["n_real"], out["n_fake"]) == (3, 3)
    assert out["is_mean"] is None and out["unavailable"]["is_mean"] == IS_UNAVAILABLE
    assert 1.0 <= out["domain_is_mean"] <= len(F.TISSUE_TYPES)


def test_cli_images_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["images", "--real", str(tmp_path / "nope"), "--fake", str(tmp_path)]) == 2
    assert "nope not found" in capsys.readouterr().err


def test_cli_images_without_classifier_has_no_domain_keys(tmp_path, capsys):
    _write_pngs(tmp_path / "real", _cxrs(2, 20))
    _write_pngs(tmp_path / "fake", _cxrs(2, 21))
    assert cli.main(["images", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake")]) == 0
    assert set(json.loads(capsys.readouterr().out)) == IMAGES_KEYS
