"""The privacy-evidence measures: ranking statistics, the loss score, the leakage probe, n-gram memorisation."""

import math

import pytest
import torch

import medim
from medim.config import DiffusionConfig
from medim.model.lora import apply_lora
from medim.privacy_eval import (
    membership_inference,
    memorisation,
    per_sample_losses,
    roc_auc,
    token_leakage,
    tpr_at_fpr,
)

DIFFUSION = DiffusionConfig()


def tiny():
    return apply_lora(medim.build_model("tiny", seed=0))


def records(model, n: int = 6) -> torch.Tensor:
    v = model.vocab
    g = torch.Generator().manual_seed(1)
    rows = [
        v.sequence(torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), [11 + i, 12, 13])
        for i in range(n)
    ]
    return torch.stack(rows)


def test_roc_auc_and_tpr_at_fpr():
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 2], [1, 2]) == 0.5 and math.isnan(roc_auc([], [1]))
    negatives = list(range(100))  # 0..99
    assert tpr_at_fpr([99.5, 95, 50], negatives, 0.01) == pytest.approx(1 / 3)  # above 98: one false positive
    assert tpr_at_fpr([99.5, 95, 50], negatives, 0.10) == pytest.approx(2 / 3)  # above 89: ten


def test_the_loss_score_is_deterministic_and_equal_sets_give_auc_one_half():
    model = tiny()
    x = records(model)
    a = per_sample_losses(model, x, diffusion=DIFFUSION)
    assert a.shape == (6,) and torch.equal(a, per_sample_losses(model, x, diffusion=DIFFUSION))
    result = membership_inference(model, x, x, diffusion=DIFFUSION)
    assert result.auc == 0.5 and result.members == result.nonmembers == 6


def test_a_single_record_update_reveals_its_codes_unless_clipped_and_noised():
    model = tiny()
    record = records(model, 1)[0]
    raw = token_leakage(model, record, diffusion=DIFFUSION, noise_multiplier=0.0, max_grad_norm=1e12, t=0.1)
    dp = token_leakage(model, record, diffusion=DIFFUSION, noise_multiplier=1.0, max_grad_norm=1.0, t=0.1)
    assert raw.auc > 0.8 and raw.correlation > 0.5
    assert dp.auc < raw.auc - 0.2 and abs(dp.correlation) < 0.3
    assert raw.present == len(set(record[model.vocab.image_slice].tolist()))


def test_memorisation_counts_shared_ngrams():
    training = ["the heart size is normal and the lungs are clear without effusion today"]
    copied = memorisation(training, training)
    assert copied.mean_max_jaccard == 1.0 and copied.verbatim_fraction == 1.0
    fresh = memorisation(["small left pleural effusion with basal atelectasis"], training)
    assert fresh.max_jaccard == 0.0 and fresh.verbatim_fraction == 0.0
    assert math.isnan(memorisation([], training).mean_max_jaccard)
