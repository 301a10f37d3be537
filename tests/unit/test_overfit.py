"""The tiny preset memorises a handful of image-report pairs, and the sampler reproduces them from either side."""

import pytest
import torch

import medim
from medim.config import DiffusionConfig, SamplerConfig, TrainConfig
from medim.diffusion import IMAGE_TO_TEXT, TEXT_TO_IMAGE, add_noise, diffusion_loss
from medim.sampling import image_to_text_prompt, sample, text_to_image_prompt
from medim.train import lr_at, train_local


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = medim.build_model("tiny", seed=0)
    v = model.vocab
    g = torch.Generator().manual_seed(1)
    reports = [[11, 12, 13, 14], [21, 22, 23], [31, 32, 33, 34, 35], [41, 42]]
    x0 = torch.stack(
        [v.sequence(torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), r) for r in reports]
    )
    train = TrainConfig(steps=600, batch_size=8, lr=3e-3, warmup_steps=10, autocast_bf16=False, log_every=10)
    # conditional tasks only: given one side the other is determined, so the loss can reach zero
    diffusion = DiffusionConfig(joint=0.0, text_to_image=0.5, image_to_text=0.5, prompt=0.0, cond_drop=0.0)
    result = train_local(model, x0.repeat(2, 1), diffusion=diffusion, train=train, progress=False)
    return model, x0, diffusion, result


@pytest.mark.parametrize("task", [TEXT_TO_IMAGE, IMAGE_TO_TEXT])
def test_loss_goes_near_zero(trained, task):
    model, x0, diffusion, result = trained
    assert result.history[0].loss > 2.0
    batch = add_noise(
        x0,
        model.vocab,
        diffusion,
        t=torch.full((4,), 0.7),
        task=torch.full((4,), task),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        assert diffusion_loss(model(batch.xt, batch.sigma), batch, model.vocab).total.item() < 0.05


def test_sampler_reproduces_pairs_from_their_condition(trained):
    model, x0, _, _ = trained
    cfg = SamplerConfig(steps=8, cfg=0.0, temperature=0.3)
    reports = sample(
        model, image_to_text_prompt(model.vocab, x0), cfg, generator=torch.Generator().manual_seed(0)
    )
    assert reports.equal(x0)
    images = sample(
        model, text_to_image_prompt(model.vocab, x0), cfg, generator=torch.Generator().manual_seed(0)
    )
    assert images.equal(x0)


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
