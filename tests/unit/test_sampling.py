import pytest
import torch

import medim
from medim.config import SamplerConfig
from medim.sampling import (
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
