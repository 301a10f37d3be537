"""VQ tokenizer model: shapes, determinism, codebook statistics, dead-code restarts, save/load, overfitting."""

import math

import pytest
import torch

from medim.config import ConfigError, load_preset
from medim.tokenize.vq import VQTokenizer, load_tokenizer, to_modality
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_quantizer import VectorQuantizer, codebook_stats
from medim.tokenize.vq_report import psnr, ssim
from medim.tokenize.vq_train import reconstruction_loss


def tiny() -> TokenizerConfig:
    return load_preset(TokenizerConfig, "tokenizer", "tiny")


def shapes(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random shapes: n RGB images [n,3,size,size] in [-1, 1] (soft discs and gradients)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for i in range(n):
        img = torch.rand(3, 1, 1, generator=g) * 0.5 * (x + y)
        for _ in range(3):
            cx, cy, r = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.3]) + torch.tensor([0, 0, 0.1])
            disc = torch.sigmoid((r - ((x - cx) ** 2 + (y - cy) ** 2).sqrt()) * 40)
            img = img + torch.rand(3, 1, 1, generator=g) * disc
        out[i] = img.clamp(0, 1) * 2 - 1
    return out


def test_presets_and_image_tokens():
    small = load_preset(TokenizerConfig, "tokenizer", "small")
    chameleon = load_preset(TokenizerConfig, "tokenizer", "liquid-7b")
    assert (tiny().image_tokens, tiny().codebook_size) == (16, 64)
    assert (small.resolution, small.image_tokens, small.codebook_size) == (64, 256, 1024)
    assert load_preset(TokenizerConfig, "tokenizer", "small-f8").image_tokens == 64
    assert (chameleon.image_tokens, chameleon.codebook_size, chameleon.downsample) == (1024, 8192, 16)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"resolution": 30}, "tokenizer.resolution=30"),
        ({"norm_groups": 5}, "tokenizer.norm_groups=5"),
        ({"in_channels": 2}, "tokenizer.in_channels=2"),
        ({"codebook_size": 1}, "tokenizer.codebook_size=1"),
        ({"ch_mult": []}, "tokenizer.ch_mult=[]"),
    ],
)
def test_bad_config_names_the_setting(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_preset(TokenizerConfig, "tokenizer", "tiny", **overrides)
    assert needle in str(err.value) and "allowed" in str(err.value)


def test_bad_train_setting_names_it():
    with pytest.raises(ConfigError, match=r"tokenizer.train.batch_size=0 is invalid"):
        load_preset(TokenizerConfig, "tokenizer", "tiny", train={"batch_size": 0})


def test_encode_decode_shapes_dtypes_and_determinism():
    torch.manual_seed(0)
    model = VQTokenizer(tiny()).eval()
    images = shapes(3, 32)
    codes = model.encode(images)
    assert codes.shape == (3, 16) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    assert torch.equal(codes, model.encode(images))
    decoded = model.decode(codes)
    assert decoded.shape == (3, 3, 32, 32) and decoded.dtype == torch.float32
    assert decoded.abs().max() <= 1
    assert torch.equal(decoded, model.decode(codes))
    gray = images[:, :1]
    assert torch.equal(model.encode(gray), model.encode(gray.expand(-1, 3, -1, -1)))
    assert to_modality(decoded, "cxr").shape == (3, 1, 32, 32)
    assert torch.allclose(to_modality(decoded, "cxr"), decoded.mean(1, keepdim=True))


def test_encode_rejects_wrong_shapes_with_named_problem():
    model = VQTokenizer(tiny())
    with pytest.raises(ValueError, match="32x32"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B,16\]"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 16), 64))


def test_codebook_stats_against_hand_computed_values():
    stats = codebook_stats(torch.tensor([0, 0, 1, 3]), 4)
    # p = (1/2, 1/4, 0, 1/4): entropy = 1.5 ln 2, perplexity = 2**1.5
    assert stats.used == 3 and stats.usage == pytest.approx(0.75)
    assert stats.perplexity == pytest.approx(2**1.5)
    uniform = codebook_stats(torch.arange(8).repeat(5), 8)
    assert uniform.usage == 1.0 and uniform.perplexity == pytest.approx(8.0)
    single = codebook_stats(torch.zeros(10, dtype=torch.long), 16)
    assert single.perplexity == pytest.approx(1.0) and single.usage == pytest.approx(1 / 16)
    assert math.isclose(codebook_stats(torch.tensor([], dtype=torch.long), 4).usage, 0.0)


@pytest.mark.parametrize("l2", [True, False])
def test_quantizer_picks_nearest_code_and_straight_through(l2):
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, beta=0.25, l2_normalize=l2)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    flat = q.prepare(z.detach())
    book = q.codebook()
    expected = (flat[:, None, :] - book[None]).pow(2).sum(-1).argmin(1)
    assert torch.equal(out.codes.flatten(), expected)
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 4, beta=0.25, l2_normalize=True)
    data = torch.randn(1, 4, 16, 16) + torch.tensor([3.0, 0, 0, 0]).view(1, 4, 1, 1)  # one region of space
    before = codebook_stats(q(data).codes, 32)
    usage = torch.bincount(q(data).codes.flatten(), minlength=32)
    dead = usage == 0
    assert dead.sum() > 0
    restarted = q.restart(dead, q(data).latents, torch.Generator().manual_seed(0))
    assert restarted == int(dead.sum())
    after = codebook_stats(q(data).codes, 32)
    assert after.used > before.used
    revived = torch.bincount(q(data).codes.flatten(), minlength=32)[dead]
    assert (revived > 0).float().mean() > 0.5


def test_metrics_psnr_ssim():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.1).clamp(0, 1)
    mse = (noisy - x).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(x, noisy), 10 * torch.log10(1 / mse))
    assert (ssim(x, torch.rand(2, 3, 32, 32)) < 0.1).all()


def test_save_load_round_trip_gives_identical_codes(tmp_path):
    torch.manual_seed(1)
    model = VQTokenizer(tiny()).eval()
    images = shapes(4, 32)
    model.save(tmp_path / "tok", step=7)
    loaded = load_tokenizer(tmp_path / "tok")
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images)), model.decode(model.encode(images)))
    assert loaded.fingerprint() == model.fingerprint()
    assert not list((tmp_path / "tok").glob("*.pt")) and not list((tmp_path / "tok").glob("*.bin"))


def test_tiny_model_overfits_a_few_images():
    torch.manual_seed(0)
    cfg = load_preset(TokenizerConfig, "tokenizer", "tiny", codebook_size=64)
    model = VQTokenizer(cfg)
    images = shapes(4, 32, seed=3)
    to01 = lambda t: (t + 1) / 2  # noqa: E731
    initial = float(psnr(to01(images), to01(model.decode(model.encode(images)))).mean())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        out = model(images)
        loss = reconstruction_loss(out.reconstruction, images, 0.5) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(psnr(to01(images), to01(model.decode(model.encode(images)))).mean())
    assert final > initial + 8, (initial, final)
    assert final > 20
