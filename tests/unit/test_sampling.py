import pytest
import torch

import medim
from medim.config import SamplerConfig
from medim.diffusion import sigma_of
from medim.sampling import (
    _commit,
    _draw,
    _regions,
    image_to_text_prompt,
    joint_prompt,
    masked_after,
    prompted_pair_prompt,
    sample,
    text_to_image_prompt,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = medim.build_model("tiny", seed=0).eval()
    with torch.no_grad():  # non-trivial time modulation so CFG and t matter
        for p in m.adaln.parameters():
            p.normal_(0, 0.02)
    return m


def _x0(model, batch=3):
    v = model.vocab
    g = torch.Generator().manual_seed(7)
    return torch.stack(
        [
            v.sequence(torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), [5, 6, 7, 8])
            for _ in range(batch)
        ]
    )


def test_arccos_schedule_is_monotone_and_ends_at_zero():
    total = torch.tensor([100])
    left = [int(masked_after(k, 8, total)) for k in range(8)]
    assert left == sorted(left, reverse=True) and left[-1] == 0 and left[0] < 100
    # arccos profile: few commits early, many late
    assert 100 - left[0] < left[-2] - left[-1]


def _check_invariants(model, prompt, out):
    v = model.vocab
    assert not (out == v.mask).any()  # every [MASK] filled
    given = prompt.x != v.mask
    assert out[given].equal(prompt.x[given])  # given tokens never changed
    codes = out[:, v.image_slice]
    assert ((codes >= v.image_offset) & (codes < v.size)).all()  # image region emits image codes only
    text = out[:, v.text_slice]
    assert ((text < v.text_size) | (text == v.eos) | (text == v.pad)).all()


@pytest.mark.parametrize("task", ["joint", "text_to_image", "image_to_text", "prompted"])
@pytest.mark.parametrize("steps", [1, 4])
def test_sampler_invariants(model, task, steps):
    v = model.vocab
    x0 = _x0(model)
    prompt = {
        "joint": lambda: joint_prompt(v, 3),
        "text_to_image": lambda: text_to_image_prompt(v, x0),
        "image_to_text": lambda: image_to_text_prompt(v, x0),
        "prompted": lambda: prompted_pair_prompt(v, [[1, 2], [3], [4, 5, 6]]),
    }[task]()
    out = sample(
        model, prompt, SamplerConfig(steps=steps, cfg=2.0), generator=torch.Generator().manual_seed(0)
    )
    _check_invariants(model, prompt, out)


def test_sampler_is_seeded_and_guidance_matters(model):
    prompt = text_to_image_prompt(model.vocab, _x0(model))
    run = lambda cfg, seed: sample(  # noqa: E731
        model, prompt, SamplerConfig(steps=4, cfg=cfg), generator=torch.Generator().manual_seed(seed)
    )
    assert run(3.0, 0).equal(run(3.0, 0))
    assert not run(3.0, 0).equal(run(0.0, 0))


def test_one_token_per_step_commits_exactly_one(model):
    v = model.vocab
    prompt = image_to_text_prompt(v, _x0(model, 1))
    n = int((prompt.x == v.mask).sum())
    out = sample(model, prompt, SamplerConfig(steps=n, cfg=0.0), generator=torch.Generator().manual_seed(0))
    _check_invariants(model, prompt, out)


def test_region_heads_equal_the_allowed_columns_of_the_full_logits(model):
    v = model.vocab
    x = text_to_image_prompt(v, _x0(model)).x
    sigma = torch.full((x.shape[0],), 0.7)
    full = model(x, sigma)
    h = model.hidden_states(x, sigma)
    torch.testing.assert_close(
        model.image_logits(h[:, v.image_slice]), full[:, v.image_slice, v.image_offset :]
    )
    ids = model.text_region_ids()
    torch.testing.assert_close(model.text_logits(h[:, v.text_slice]), full[:, v.text_slice][..., ids])
    allowed = v.allowed_outputs()
    assert allowed[v.text_slice][:, ids].all() and int(allowed[v.text_slice].sum()) == v.text_tokens * len(
        ids
    )


def _reference_last_step(model, prompt, cfg, t):
    """The full-vocabulary formula at noise level t [B]: guided logits over [B, L, V], -inf where not allowed,
    argmax at every masked position."""
    v = model.vocab
    x = prompt.x
    sigma = sigma_of(t, 1e-3)
    logits = model(x, sigma)
    if cfg.cfg > 0 and prompt.condition.any():
        uncond = torch.where(prompt.condition, torch.full_like(x, v.mask), x)
        w = (cfg.cfg * (1 - t))[:, None, None]
        mixed = (1 + w) * logits - w * model(uncond, sigma)
        logits = torch.where(model.allowed, mixed, torch.full_like(mixed, float("-inf")))
    return torch.where(x == v.mask, logits.argmax(-1), x)


def _task_prompt(model, task):
    v = model.vocab
    x0 = _x0(model)
    prompt = {
        "joint": lambda: joint_prompt(v, 3),
        "text_to_image": lambda: text_to_image_prompt(v, x0),
        "image_to_text": lambda: image_to_text_prompt(v, x0),
    }[task]()
    return prompt, x0


@pytest.mark.parametrize("task", ["text_to_image", "image_to_text", "joint"])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_one_step_sampling_is_the_argmax_of_the_full_vocabulary_formula(model, task, guidance):
    prompt, _ = _task_prompt(model, task)
    cfg = SamplerConfig(steps=1, cfg=guidance, autocast_bf16=False)
    out = sample(model, prompt, cfg, generator=torch.Generator().manual_seed(0))
    assert out.equal(_reference_last_step(model, prompt, cfg, torch.ones(prompt.x.shape[0])))


@pytest.mark.parametrize("task", ["text_to_image", "image_to_text"])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_guided_last_step_equals_the_full_vocabulary_formula(model, task, guidance):
    """The region-restricted heads and the guidance mix at t < 1 (w = cfg (1 - t) > 0)."""
    v = model.vocab
    prompt, x0 = _task_prompt(model, task)
    filled = (prompt.x == v.mask) & (torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.5)
    prompt.x[filled] = x0[filled]
    cfg = SamplerConfig(steps=1, cfg=guidance, autocast_bf16=False)
    x, t = prompt.x, torch.tensor([0.3, 0.5, 0.9])
    masked = x == v.mask
    guided = guidance > 0
    uncond = torch.where(prompt.condition, torch.full_like(x, v.mask), x)
    sigma = sigma_of(t, 1e-3)
    with torch.no_grad():
        if guided:
            h = model.hidden_states(torch.cat([x, uncond]), torch.cat([sigma, sigma]))
        else:
            h = model.hidden_states(x, sigma)
        out = _commit(x, masked, h, t, 0, masked.sum(1), _regions(model), cfg, guided, None)
    assert out.equal(_reference_last_step(model, prompt, cfg, t))


def test_draws_follow_the_softmax_and_report_its_log_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]]).repeat(40_000, 1)
    pick, logp = _draw(logits, torch.Generator().manual_seed(0), greedy=False)
    probs = logits[0].softmax(-1)
    freq = torch.bincount(pick, minlength=5).float() / len(pick)
    assert (freq - probs).abs().max() < 0.01 and freq[4] == 0
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, pick[:, None]).squeeze(-1))
    greedy, glogp = _draw(logits[:2], None, greedy=True)
    assert greedy.tolist() == [0, 0]
    torch.testing.assert_close(glogp, logits[:2].log_softmax(-1)[:, 0])


def test_bf16_autocast_sampling_keeps_the_invariants(model):
    prompt = image_to_text_prompt(model.vocab, _x0(model))
    out = sample(model, prompt, SamplerConfig(steps=4, cfg=2.0), generator=torch.Generator().manual_seed(0))
    _check_invariants(model, prompt, out)


def test_mask_outside_the_regions_is_refused(model):
    prompt = joint_prompt(model.vocab, 1)
    prompt.x[0, 0] = model.vocab.mask
    with pytest.raises(ValueError, match="outside the image and text regions"):
        sample(model, prompt, SamplerConfig(steps=2))


@pytest.mark.parametrize("extra", [0, 7])
def test_as_many_steps_as_positions_or_more_commits_one_token_per_step(model, extra):
    """The slow reference of the sampling-quality benchmark: one backbone pass per generated position."""
    v = model.vocab
    prompt = image_to_text_prompt(v, _x0(model))
    n = int((prompt.x == v.mask).sum(1)[0])
    left: list[int] = []
    forward = model.hidden_states

    def counting(x, sigma, *args, **kwargs):
        left.append(int((x[0] == v.mask).sum()))
        return forward(x, sigma, *args, **kwargs)

    model.hidden_states = counting
    try:
        out = sample(
            model, prompt, SamplerConfig(steps=n + extra, cfg=0.0), generator=torch.Generator().manual_seed(0)
        )
    finally:
        del model.hidden_states
    assert left == list(range(n, 0, -1))
    _check_invariants(model, prompt, out)
