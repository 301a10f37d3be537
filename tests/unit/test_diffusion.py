import math

import pytest
import torch

from medim.config import DiffusionConfig
from medim.diffusion import (
    IMAGE_TO_TEXT,
    JOINT,
    PROMPT,
    TEXT_TO_IMAGE,
    NoisedBatch,
    add_noise,
    diffusion_loss,
    mask_prob,
    sample_t,
    sigma_of,
)
from medim.tokenize.vocab import Vocab

VOCAB = Vocab(text_size=10, codebook_size=4, image_tokens=3, text_tokens=4)


def _x0(batch):
    codes = torch.tensor([0, 1, 2])
    return torch.stack([VOCAB.sequence(codes, [1, 2]) for _ in range(batch)])


def test_vocab_layout():
    x0 = VOCAB.sequence(torch.tensor([3, 0, 1]), [7, 8])
    # <boi> c c c <eoi> 7 8 <eos> <pad>
    assert x0.tolist() == [10, 18, 15, 16, 11, 7, 8, 12, 13]
    assert VOCAB.image_codes(x0).tolist() == [3, 0, 1]
    assert VOCAB.text_ids(x0) == [7, 8]
    long = VOCAB.sequence(torch.zeros(3, dtype=torch.long), list(range(9)))
    assert long[VOCAB.text_slice].tolist() == [0, 1, 2, VOCAB.eos]
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 4\)"):
        VOCAB.sequence(torch.tensor([0, 1, 4]), [])


def test_schedule_values():
    t = torch.tensor([0.5, 1.0])
    assert mask_prob(t, 1e-3).tolist() == pytest.approx([0.4995, 0.999])
    assert sigma_of(t, 1e-3).tolist() == pytest.approx([-math.log(1 - 0.4995), -math.log(0.001)], rel=1e-5)


def test_low_discrepancy_times():
    t = sample_t(8, 1e-3, torch.Generator().manual_seed(0))
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().sort().values
    assert strata.tolist() == list(range(8))  # exactly one t per stratum


def test_masking_rate_matches_schedule():
    cfg = DiffusionConfig(joint=1, text_to_image=0, image_to_text=0, prompt=0, cond_drop=0)
    x0 = _x0(4000)
    t = torch.full((4000,), 0.6)
    batch = add_noise(x0, VOCAB, cfg, t=t, generator=torch.Generator().manual_seed(0))
    content = VOCAB.image_positions() | VOCAB.text_positions()
    rate = batch.masked[:, content].float().mean().item()
    expected = (1 - 1e-3) * 0.6
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / (4000 * 7))
    assert not batch.masked[:, ~content].any()  # <boi>, <eoi> never masked


@pytest.mark.parametrize(
    ("task", "target", "clean"),
    [
        (JOINT, "both", None),
        (TEXT_TO_IMAGE, "image", "text"),
        (IMAGE_TO_TEXT, "text", "image"),
    ],
)
def test_task_masks_hit_the_right_regions(task, target, clean):
    cfg = DiffusionConfig(cond_drop=0)
    x0 = _x0(64)
    batch = add_noise(x0, VOCAB, cfg, t=torch.ones(64), task=torch.full((64,), task))
    image, text = VOCAB.image_positions(), VOCAB.text_positions()
    region = {"both": image | text, "image": image, "text": text}[target]
    assert batch.target.equal(region.expand(64, -1))
    assert batch.masked[:, region].float().mean() > 0.95
    if clean:
        clean_region = image if clean == "image" else text
        assert not batch.masked[:, clean_region].any()
        assert batch.xt[:, clean_region].equal(x0[:, clean_region])


def test_prompt_task_keeps_prefix_and_cond_drop_hides_condition():
    cfg = DiffusionConfig(prompt_tokens=2, cond_drop=0)
    batch = add_noise(_x0(8), VOCAB, cfg, t=torch.ones(8), task=torch.full((8,), PROMPT))
    start = VOCAB.text_slice.start
    assert not batch.masked[:, start : start + 2].any()
    assert not batch.target[:, start : start + 2].any()
    dropped = add_noise(
        _x0(8),
        VOCAB,
        DiffusionConfig(cond_drop=0.999999),
        t=torch.ones(8) * 0.01,
        task=torch.full((8,), TEXT_TO_IMAGE),
    )
    assert dropped.masked[:, VOCAB.text_slice].all()  # condition replaced by [MASK]
    assert not dropped.target[:, VOCAB.text_slice].any()  # ... but never scored


def test_loss_equals_hand_computed_value():
    """Two samples, V=19, uniform logits except a few hand-set ones."""
    x0 = _x0(2)
    masked = torch.zeros(2, VOCAB.seq_len, dtype=torch.bool)
    masked[0, 1] = True  # image position, target id 15
    masked[0, 5] = True  # text position, target id 1
    masked[1, 6] = True  # text position, target id 2
    target = (VOCAB.image_positions() | VOCAB.text_positions()).expand(2, -1)
    t = torch.tensor([0.5, 0.25])
    batch = NoisedBatch(
        x0=x0,
        xt=x0,
        t=t,
        sigma=sigma_of(t, 1e-3),
        task=torch.zeros(2, dtype=torch.long),
        target=target,
        masked=masked,
    )
    logits = torch.zeros(2, VOCAB.seq_len, VOCAB.size)
    logits[0, 1, 15] = math.log(3.0)  # p = 3 / (3 + 18)
    logits[1, 6, :10] = float("-inf")
    logits[1, 6, 2] = 0.0  # p = 1 / (1 + 9)
    loss = diffusion_loss(logits, batch, VOCAB)
    n_target = 7  # 3 image + 4 text positions
    s0_image = -math.log(3 / 21) / 0.5 / n_target
    s0_text = -math.log(1 / 19) / 0.5 / n_target
    s1_text = -math.log(1 / 10) / 0.25 / n_target
    assert loss.per_sample.tolist() == pytest.approx([s0_image + s0_text, s1_text], rel=1e-6)
    assert loss.total.item() == pytest.approx((s0_image + s0_text + s1_text) / 2, rel=1e-6)
    assert loss.image.item() == pytest.approx(s0_image / 2, rel=1e-6)
    assert (loss.image + loss.text).item() == pytest.approx(loss.total.item(), rel=1e-6)


def test_per_sample_loss_independent_of_other_samples():
    """A sample's loss must not change when another sample in the batch changes (DP-SGD requirement)."""
    cfg = DiffusionConfig()
    g = torch.Generator().manual_seed(3)
    batch = add_noise(_x0(3), VOCAB, cfg, generator=g)
    logits = torch.randn(3, VOCAB.seq_len, VOCAB.size)
    first = diffusion_loss(logits, batch, VOCAB).per_sample[0]
    batch.masked[1:] = True
    batch.target[1:] = True
    assert diffusion_loss(logits, batch, VOCAB).per_sample[0] == first
