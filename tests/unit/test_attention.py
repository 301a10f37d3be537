"""MeDiM's own bidirectional attention (``attn_implementation: sdpa``) against transformers' eager attention."""

import pytest
import torch

import medim
from medim.model.attention import ATTENTION

torch.set_num_threads(1)


def _pair(**kw):
    """The same tiny model (same seed, so same weights) with our attention and with transformers' eager one."""
    ours = medim.build_model("tiny", seed=0, attn_implementation="sdpa", **kw).eval()
    eager = medim.build_model("tiny", seed=0, attn_implementation="eager", **kw).eval()
    with torch.no_grad():  # non-zero modulation so the time path is exercised too
        for a, b in zip(ours.adaln.parameters(), eager.adaln.parameters(), strict=True):
            a.normal_(0, 0.05, generator=torch.Generator().manual_seed(a.numel()))
            b.copy_(a)
    return ours, eager


def _inputs(model, batch=3):
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, model.vocab.text_size, (batch, model.vocab.seq_len), generator=g)
    return x, torch.rand(batch, generator=g) * 3


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen2"])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_matches_eager_attention(family, attention):
    ours, eager = _pair(family=family, attention=attention)
    assert ours.backbone.config._attn_implementation == ATTENTION
    assert ours.backbone.config.num_key_value_heads < ours.backbone.config.num_attention_heads  # GQA
    x, sigma = _inputs(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours.hidden_states(x, sigma), eager.hidden_states(x, sigma))


def test_matches_eager_with_padding_and_without_a_mask():
    ours, eager = _pair()
    x, sigma = _inputs(ours)
    valid = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        no_mask = ours.hidden_states(x, sigma)  # nothing padded: no mask is built
        torch.testing.assert_close(ours.hidden_states(x, sigma, valid), no_mask)
        valid[0, -5:] = False
        valid[2, -1:] = False
        torch.testing.assert_close(ours.hidden_states(x, sigma, valid), eager.hidden_states(x, sigma, valid))


def test_gradients_match_eager_and_bf16_autocast_stays_close():
    ours, eager = _pair()
    x, sigma = _inputs(ours)
    grads = []
    for model in (ours, eager):
        model.zero_grad(set_to_none=True)
        model.hidden_states(x, sigma).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours.hidden_states(x, sigma), eager.hidden_states(x, sigma)
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
