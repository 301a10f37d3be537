"""A site's AdamW moments between rounds: carried exactly, checked against the trainable set, kept per round in
the site's state dir and replayed exactly when a round runs again."""

import copy

import pytest
import torch

import medim
from client.moments import KEEP, load_moments, save_moments
from medim.config import DiffusionConfig, TrainConfig, load_preset
from medim.diffusion import add_noise
from medim.model.lora import apply_lora
from medim.moments import Moments, trainable_parameters
from medim.privacy import PrivacyConfig, train_private
from medim.train import compute_loss, train_local

DIFFUSION = load_preset(DiffusionConfig, "diffusion", "default")


def tiny():
    return apply_lora(medim.build_model("tiny", seed=0))


def records(model, n: int = 8) -> torch.Tensor:
    v = model.vocab
    g = torch.Generator().manual_seed(3)
    return torch.stack(
        [
            v.sequence(torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), [11 + i, 12])
            for i in range(n)
        ]
    )


def step(model, optimizer, x0, seed: int) -> None:
    batch = add_noise(x0, model.vocab, DIFFUSION, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad(set_to_none=True)
    compute_loss(model, batch, autocast_bf16=False).total.backward()
    optimizer.step()


def adamw(model):
    return torch.optim.AdamW(list(trainable_parameters(model).values()), lr=1e-2)


def test_moments_continue_adamw_exactly_and_a_fresh_optimizer_differs():
    model = tiny()
    x0 = records(model)
    first = adamw(model)
    for seed in range(2):
        step(model, first, x0, seed)
    moments = Moments.read_from(first, model)
    assert {k.rsplit(":", 1)[1] for k in moments.tensors} == {"exp_avg", "exp_avg_sq", "step"}
    resumed, fresh = copy.deepcopy(model), copy.deepcopy(model)
    carried = adamw(resumed)
    moments.load_into(carried, resumed)
    step(model, first, x0, 7)
    step(resumed, carried, x0, 7)
    step(fresh, adamw(fresh), x0, 7)
    ours, theirs, new = (trainable_parameters(m) for m in (model, resumed, fresh))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(not torch.equal(ours[k], new[k]) for k in ours)


def test_moments_that_do_not_fit_the_trainable_set_are_refused():
    model = tiny()
    name, param = next(iter(trainable_parameters(model).items()))
    good = {f"{name}:exp_avg": torch.zeros_like(param), f"{name}:exp_avg_sq": torch.zeros_like(param)}
    good[f"{name}:step"] = torch.tensor(3.0)
    Moments(good).check(model)
    with pytest.raises(ValueError, match="shape"):
        Moments({**good, f"{name}:exp_avg": torch.zeros(2, 2)}).check(model)
    with pytest.raises(ValueError, match="not in the trainable set"):
        Moments({"backbone.embed.weight:step": torch.tensor(1.0)}).check(model)
    with pytest.raises(ValueError, match="expected exp_avg"):
        Moments({f"{name}:step": torch.tensor(1.0)}).check(model)


@pytest.mark.parametrize("private", [False, True])
def test_training_hands_back_moments_for_every_trainable_tensor(tmp_path, private):
    model = tiny()
    moments = Moments()
    train = TrainConfig(steps=2, batch_size=4, warmup_steps=0, autocast_bf16=False)
    train_private(
        model,
        records(model),
        diffusion=DIFFUSION,
        train=train,
        privacy=PrivacyConfig(enabled=private, seed=0),
        ledger_path=tmp_path / "ledger.json",
        progress=False,
        moments=moments,
    )
    names = set(trainable_parameters(model))
    if private:  # the noise reaches every trainable tensor
        assert {k.rsplit(":", 1)[0] for k in moments.tensors} == names
    assert all(
        float(moments.tensors[f"{n}:step"]) == 2 for n in {k.rsplit(":", 1)[0] for k in moments.tensors}
    )
    again = Moments(dict(moments.tensors))
    train_local(model, records(model), diffusion=DIFFUSION, train=train, progress=False, moments=again)
    assert all(float(again.tensors[k]) == 4 for k in again.tensors if k.endswith(":step"))


def test_site_files_replay_the_moments_a_round_started_from(tmp_path):
    model = tiny()
    name, param = next(iter(trainable_parameters(model).items()))

    def moments(value: float) -> Moments:
        return Moments(
            {
                f"{name}:exp_avg": torch.full_like(param, value),
                f"{name}:exp_avg_sq": torch.full_like(param, value),
                f"{name}:step": torch.tensor(value),
            }
        )

    folder = tmp_path / "moments"
    assert load_moments(folder, 1, model).tensors == {}
    for r in (1, 2, 3):
        save_moments(folder, r, moments(float(r)))
    assert sorted(p.name for p in folder.iterdir()) == [f"round-{r:04d}.safetensors" for r in (2, 3)][-KEEP:]
    # round 3 runs again (the coordinator resumed): it starts from round 2's moments, not its own
    assert float(load_moments(folder, 3, model).tensors[f"{name}:step"]) == 2.0
    assert float(load_moments(folder, 9, model).tensors[f"{name}:step"]) == 3.0
    (folder / "round-0003.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="round-0003.safetensors: optimizer moments not used"):
        assert load_moments(folder, 4, model).tensors == {}
