"""DP-SGD on the LoRA-wrapped tiny model: per-sample gradients, clipping, noise, ledger, budget, FedProx."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import medim
import medim.privacy_sgd
from medim.config import ConfigError, DiffusionConfig, TrainConfig, load_preset
from medim.diffusion import add_noise
from medim.model.lora import apply_lora, trainable_names, trainable_state
from medim.privacy import PrivacyConfig, train_private
from medim.privacy_ledger import LedgerEntry, LedgerError, PrivacyLedger
from medim.privacy_sgd import GRAD_SAMPLE_MODES, privatize
from medim.proximal import ProximalTerm
from medim.train import compute_loss, train_local

torch.set_num_threads(1)
DIFFUSION = DiffusionConfig()
TRAINABLE_PREFIXES = ("time.", "adaln.", "new_embed.", "new_head.")


def tiny(adaln: str = "per_layer"):
    return apply_lora(medim.build_model("tiny", seed=0, adaln=adaln))


def records(model, n: int = 16) -> torch.Tensor:
    """x0 [n, L]: random image codes with short distinct reports."""
    v = model.vocab
    g = torch.Generator().manual_seed(1)
    rows = [
        v.sequence(
            torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), [11 + i, 12, 13 + i % 3]
        )
        for i in range(n)
    ]
    return torch.stack(rows)


def noised(model, n: int = 4):
    """A fixed noised batch of n records (one of each task at distinct times)."""
    x0 = records(model, n)
    t = torch.linspace(0.3, 0.9, n)
    task = torch.arange(n) % 4
    return add_noise(x0, model.vocab, DIFFUSION, t=t, task=task, generator=torch.Generator().manual_seed(2))


def rows_of(batch, start: int, stop: int):
    """Records start..stop of a noised batch."""
    return type(batch)(**{k: getattr(batch, k)[start:stop] for k in batch.__dataclass_fields__})


def one_at_a_time(model, batch) -> list[dict[str, torch.Tensor]]:
    """Gradient of each record's own loss, fp32, one record per backward."""
    out = []
    params = dict(model.named_parameters())
    for i in range(batch.x0.shape[0]):
        model.zero_grad(set_to_none=True)
        compute_loss(model, rows_of(batch, i, i + 1), autocast_bf16=False).total.backward()
        out.append({name: params[name].grad.detach().clone() for name in trainable_names(model)})
    model.zero_grad(set_to_none=True)
    return out


def session_for(model, mode: str, *, noise: float = 0.0, clip: float = 1e6, batch: int = 4, lr: float = 0.1):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    return privatize(
        model,
        opt,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=batch,
        grad_sample_mode=mode,
        noise_generator=torch.Generator().manual_seed(3),
    )


@pytest.mark.parametrize("adaln", ["per_layer", "single"])
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_per_sample_gradients_match_one_at_a_time(mode, adaln):
    model = tiny(adaln)
    model.train()
    batch = noised(model)
    reference = one_at_a_time(model, batch)
    session = session_for(model, mode)
    try:
        session.backward(compute_loss(model, batch, autocast_bf16=False).per_sample)
        params = dict(model.named_parameters())
        names = trainable_names(model)
        assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
        assert any(n.startswith("new_embed.") for n in names) and any(n.startswith("adaln.") for n in names)
        for name in names:
            grad_sample = params[name].grad_sample
            assert grad_sample.shape == (4, *params[name].shape), name
            for i, ref in enumerate(reference):
                torch.testing.assert_close(grad_sample[i], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    finally:
        session.close()


@pytest.mark.parametrize(
    ("mode", "adaln"),
    [(m, a) for m in GRAD_SAMPLE_MODES for a in ("per_layer", "single")],
)
def test_clipped_noiseless_step_is_mean_of_clipped_per_sample_gradients(mode, adaln):
    model = tiny(adaln)
    model.train()
    batch = noised(model)
    reference = one_at_a_time(model, batch)
    norms = [torch.sqrt(sum((g.double() ** 2).sum() for g in ref.values())) for ref in reference]
    clip = float(torch.stack(norms).median())  # clips about half of the records
    expected = {
        name: sum(
            min(1.0, clip / float(norm)) * ref[name] for ref, norm in zip(reference, norms, strict=True)
        )
        / 4
        for name in trainable_names(model)
    }
    session = session_for(model, mode, clip=clip)
    try:
        session.backward(compute_loss(model, batch, autocast_bf16=False).per_sample)
        assert session.optimizer.pre_step()
        params = dict(model.named_parameters())
        for name, want in expected.items():
            torch.testing.assert_close(params[name].grad, want, rtol=1e-4, atol=1e-7, msg=name)
    finally:
        session.close()


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_a_batch_in_chunks_takes_the_same_dp_step(mode):
    """Chunks 4 + 2 of a 6-record batch: the same clipped sum, one noise draw, one accounted step."""
    whole, chunked = tiny().train(), tiny().train()
    batch = noised(whole, 6)
    moved = {}
    for model, pieces in ((whole, [(0, 6)]), (chunked, [(0, 4), (4, 6)])):
        before = {k: v.clone() for k, v in trainable_state(model).items()}
        session = session_for(model, mode, noise=0.5, clip=0.5, batch=6)
        steps = []
        session.optimizer.attach_step_hook(lambda opt, steps=steps: steps.append(1))
        try:
            for start, stop in pieces[:-1]:
                session.accumulate(
                    compute_loss(model, rows_of(batch, start, stop), autocast_bf16=False).per_sample
                )
            start, stop = pieces[-1]
            session.backward(compute_loss(model, rows_of(batch, start, stop), autocast_bf16=False).per_sample)
            assert session.step()
        finally:
            session.close()
        assert len(steps) == 1
        moved[len(pieces)] = {k: v - before[k] for k, v in trainable_state(model).items()}
    for name, delta in moved[1].items():
        torch.testing.assert_close(moved[2][name], delta, rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(d.abs().max()) > 0 for d in moved[1].values())


def test_train_private_runs_big_batches_in_chunks(tmp_path, monkeypatch):
    chunks = []
    accumulate = medim.privacy_sgd.DPSession.accumulate
    monkeypatch.setattr(
        medim.privacy_sgd.DPSession,
        "accumulate",
        lambda self, per_sample: (chunks.append(len(per_sample)), accumulate(self, per_sample))[1],
    )
    model = tiny()
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    result = train_private(
        model,
        records(model, 16),
        diffusion=DIFFUSION,
        train=TrainConfig(steps=3, batch_size=8, log_every=1),
        privacy=PrivacyConfig(epsilon_budget=1e3, delta=1e-3, seed=0, max_physical_batch=3),
        ledger_path=tmp_path / "ledger.json",
        progress=False,
    )
    assert chunks and max(chunks) <= 3  # every chunk but the last of each batch went through accumulate
    assert (
        result.steps == 3
        and PrivacyLedger.load(tmp_path / "ledger.json", accountant="rdp", delta=1e-3).history[-1].steps == 3
    )
    assert all(math.isfinite(h.loss) for h in result.history)
    assert all(not torch.equal(v, before[k]) for k, v in trainable_state(model).items())


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_noiseless_unclipped_dp_step_equals_plain_step(mode):
    plain, private = tiny(), tiny()
    batch = noised(plain)
    plain.train()
    opt = torch.optim.SGD([p for p in plain.parameters() if p.requires_grad], lr=0.1)
    compute_loss(plain, batch, autocast_bf16=False).total.backward()
    opt.step()
    private.train()
    session = session_for(private, mode)
    try:
        session.backward(compute_loss(private, batch, autocast_bf16=False).per_sample)
        assert session.step()
    finally:
        session.close()
    want, got = plain.state_dict(), private.state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("autocast", [False, True])
def test_noisy_round_moves_every_trainable_and_no_frozen_tensor(tmp_path, mode, autocast):
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    names_before = set(trainable_state(model))
    train = TrainConfig(steps=2, batch_size=4, autocast_bf16=autocast, warmup_steps=0)
    privacy = PrivacyConfig(seed=0, grad_sample_mode=mode)
    result = train_private(
        model,
        records(model),
        diffusion=DIFFUSION,
        train=train,
        privacy=privacy,
        ledger_path=tmp_path / "ledger.json",
        progress=False,
    )
    assert not result.refused and result.steps == 2 and math.isfinite(result.final_loss)
    after = model.state_dict()
    trainable = set(trainable_state(model))
    assert trainable == names_before
    for name, value in before.items():
        if name in trainable:
            assert not torch.equal(after[name], value), f"{name} did not move"
        else:
            assert torch.equal(after[name], value), f"frozen {name} changed"
    # Opacus is gone: no hooks, no per-sample attributes; the model runs normally
    assert not hasattr(model, "autograd_grad_sample_hooks")
    for p in model.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample"):
            assert not hasattr(p, attr)
    batch = noised(model)
    with torch.no_grad():
        assert torch.isfinite(model(batch.xt, batch.sigma).max())


def test_trainable_state_is_only_lora_and_new_modules(tmp_path):
    model = tiny()
    train_private(
        model,
        records(model),
        diffusion=DIFFUSION,
        train=TrainConfig(steps=1, batch_size=4),
        privacy=PrivacyConfig(seed=0),
        ledger_path=tmp_path / "ledger.json",
        progress=False,
    )
    keys = set(trainable_state(model))
    assert keys and all("lora_" in k or k.startswith(TRAINABLE_PREFIXES) for k in keys)
    lora_keys = {k for k in keys if "lora_" in k}
    assert all(k.startswith("backbone.") for k in lora_keys)
    base = {k for k in model.state_dict() if "lora_" not in k and not k.startswith(TRAINABLE_PREFIXES)}
    assert base and not keys & base


def test_empty_poisson_batch_takes_a_noise_only_step():
    model = tiny()
    model.train()
    before = trainable_state(model)
    session = session_for(model, "hooks", noise=1.0, clip=1.0)
    try:
        session.backward(None)
        assert session.step()
    finally:
        session.close()
    after = trainable_state(model)
    assert all(not torch.equal(after[k], before[k]) for k in before)


def test_ledger_golden_rdp_epsilon(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.json", accountant="rdp", delta=1e-5)
    ledger = ledger.with_round([LedgerEntry(1.5, 0.04, int(90 / 0.04))])
    assert ledger.epsilon() == pytest.approx(7.32911117143, rel=1e-9)
    assert PrivacyLedger(tmp_path / "x.json", accountant="rdp", delta=1e-5).epsilon() == 0.0


def test_planned_epsilon_equals_the_accountant_on_the_unmerged_history(tmp_path):
    from opacus.accountants import RDPAccountant

    ledger = PrivacyLedger(tmp_path / "l.json", accountant="rdp", delta=1e-5)
    ledger = ledger.with_round([LedgerEntry(1.0, 0.1, 15)])
    ledger = ledger.with_round([*ledger.history, LedgerEntry(1.0, 0.1, 15)])
    planned = LedgerEntry(1.0, 0.1, 15)
    acc = RDPAccountant()
    acc.history = [(1.0, 0.1, 15)] * 3
    expected = acc.get_epsilon(delta=1e-5)
    assert ledger.epsilon(planned) == pytest.approx(expected, rel=1e-12)
    assert ledger.epsilon(planned) == ledger.epsilon(planned)  # memoised: the same value again
    assert ledger.epsilon() < ledger.epsilon(planned) < ledger.epsilon(LedgerEntry(1.0, 0.1, 30))


def test_ledger_persists_across_restarts_and_never_decreases(tmp_path):
    path = tmp_path / "state" / "ledger.json"
    entry = LedgerEntry(1.1, 0.05, 30)
    epsilons = []
    for round_ in range(1, 5):
        ledger = PrivacyLedger.load(path, accountant="rdp", delta=1e-5)  # a new process each round
        assert ledger.rounds == round_ - 1
        ledger.with_round([*ledger.history, entry]).save()
        epsilons.append(PrivacyLedger.load(path, accountant="rdp", delta=1e-5).epsilon())
    assert all(b > a for a, b in zip(epsilons[:-1], epsilons[1:], strict=True))
    reloaded = PrivacyLedger.load(path, accountant="rdp", delta=1e-5)
    assert reloaded.history == [LedgerEntry(1.1, 0.05, 120)]
    assert epsilons[-1] == pytest.approx(
        PrivacyLedger(path, accountant="rdp", delta=1e-5, history=[LedgerEntry(1.1, 0.05, 120)]).epsilon()
    )
    raw = json.loads(path.read_text())
    assert raw["rounds"] == 4 and raw["epsilon"] == pytest.approx(epsilons[-1])
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temporary files left


def test_train_private_accumulates_across_rounds(tmp_path):
    path = tmp_path / "ledger.json"
    train = TrainConfig(steps=3, batch_size=4, warmup_steps=0)
    results = []
    for _ in range(2):
        model = tiny()  # a restarted site process: new model, new objects, same ledger file
        results.append(
            train_private(
                model,
                records(model),
                diffusion=DIFFUSION,
                train=train,
                privacy=PrivacyConfig(seed=0),
                ledger_path=path,
                progress=False,
            )
        )
    first, second = results
    assert first.sample_rate == 4 / 16 and first.rounds == 1 and second.rounds == 2
    assert 0 < first.epsilon < second.epsilon
    ledger = PrivacyLedger.load(path, accountant="rdp", delta=1e-5)
    assert ledger.history == [LedgerEntry(1.0, 0.25, 6)]
    assert second.epsilon == pytest.approx(ledger.epsilon())


@pytest.mark.parametrize(
    "content", ["{not json", '{"format": "other"}', '{"format": "medim-privacy-ledger"}']
)
def test_corrupt_ledger_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(LedgerError, match="ledger.json"):
        PrivacyLedger.load(path, accountant="rdp", delta=1e-5)


def test_ledger_with_other_accounting_settings_is_an_error(tmp_path):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, accountant="rdp", delta=1e-5).with_round([LedgerEntry(1.0, 0.1, 5)]).save()
    with pytest.raises(LedgerError, match="privacy.accountant"):
        PrivacyLedger.load(path, accountant="prv", delta=1e-5)
    with pytest.raises(LedgerError, match="privacy.delta"):
        PrivacyLedger.load(path, accountant="rdp", delta=1e-6)


def test_round_over_budget_is_refused_without_touching_model_or_ledger(tmp_path):
    path = tmp_path / "ledger.json"
    train = TrainConfig(steps=3, batch_size=4, warmup_steps=0)
    one_round = PrivacyLedger(
        path, accountant="rdp", delta=1e-5, history=[LedgerEntry(1.0, 0.25, 3)]
    ).epsilon()
    privacy = PrivacyConfig(seed=0, epsilon_budget=one_round * 1.1)
    model = tiny()
    first = train_private(
        model,
        records(model),
        diffusion=DIFFUSION,
        train=train,
        privacy=privacy,
        ledger_path=path,
        progress=False,
    )
    assert not first.refused and first.epsilon == pytest.approx(one_round)
    state, ledger_bytes = copy.deepcopy(model.state_dict()), path.read_bytes()
    second = train_private(
        model,
        records(model),
        diffusion=DIFFUSION,
        train=train,
        privacy=privacy,
        ledger_path=path,
        progress=False,
    )
    assert second.refused and second.steps == 0 and not second.history
    assert "privacy.epsilon_budget" in second.reason
    assert second.epsilon == pytest.approx(first.epsilon)
    assert path.read_bytes() == ledger_bytes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_crash_mid_round_still_counts_the_planned_steps_and_removes_hooks(tmp_path):
    path = tmp_path / "ledger.json"
    model = tiny()

    def crash(_log):
        raise RuntimeError("site process killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_private(
            model,
            records(model),
            diffusion=DIFFUSION,
            train=TrainConfig(steps=5, batch_size=4, log_every=1),
            privacy=PrivacyConfig(seed=0),
            ledger_path=path,
            progress=False,
            on_log=crash,
        )
    assert PrivacyLedger.load(path, accountant="rdp", delta=1e-5).history == [LedgerEntry(1.0, 0.25, 5)]
    assert not hasattr(model, "autograd_grad_sample_hooks")
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_non_private_round_makes_epsilon_infinite_and_later_dp_rounds_refused(tmp_path):
    path = tmp_path / "ledger.json"
    train = TrainConfig(steps=1, batch_size=4)
    model = tiny()
    x0 = records(model)
    off = train_private(
        model,
        x0,
        diffusion=DIFFUSION,
        train=train,
        privacy=PrivacyConfig(enabled=False),
        ledger_path=path,
        progress=False,
    )
    assert not off.refused and off.steps == 1 and off.epsilon == math.inf
    again = train_private(
        model,
        x0,
        diffusion=DIFFUSION,
        train=train,
        privacy=PrivacyConfig(seed=0),
        ledger_path=path,
        progress=False,
    )
    assert again.refused and "without DP" in again.reason


def test_proximal_gradient_is_mu_times_distance_to_anchor():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -1.0]]))
    term = ProximalTerm.for_model(lin, mu=0.5, anchor={"weight": torch.tensor([[1.0, 1.0]])})
    term.add_grad()
    assert torch.equal(lin.weight.grad, torch.tensor([[1.0, -1.0]]))  # 0.5 * ([3, -1] - [1, 1])
    term.add_grad()  # adds to an existing gradient
    assert torch.equal(lin.weight.grad, torch.tensor([[2.0, -2.0]]))
    assert ProximalTerm.for_model(lin, mu=0.0, anchor=None) is None
    with pytest.raises(KeyError, match="missing"):
        ProximalTerm.for_model(lin, mu=1.0, anchor={})


@pytest.mark.parametrize("private", [False, True])
def test_proximal_term_pulls_update_toward_anchor(tmp_path, private):
    train = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=0)

    def distance(mu: float) -> float:
        model = tiny()
        anchor = trainable_state(model)
        x0 = records(model)
        if private:
            train_private(
                model,
                x0,
                diffusion=DIFFUSION,
                train=train,
                privacy=PrivacyConfig(seed=0, epsilon_budget=50.0),
                ledger_path=tmp_path / f"ledger-{mu}.json",
                proximal_mu=mu,
                anchor=anchor,
                progress=False,
            )
        else:
            train_local(
                model, x0, diffusion=DIFFUSION, train=train, proximal_mu=mu, anchor=anchor, progress=False
            )
        state = trainable_state(model)
        return math.sqrt(sum(float(((state[k] - anchor[k]) ** 2).sum()) for k in anchor))

    assert 0 < distance(50.0) < distance(0.0)


def test_config_presets_and_validation():
    assert load_preset(PrivacyConfig, "dp", "default") == PrivacyConfig()
    assert not load_preset(PrivacyConfig, "dp", "off").enabled
    strict = load_preset(PrivacyConfig, "dp", "strict")
    assert strict.epsilon_budget < PrivacyConfig().epsilon_budget
    for setting, value in [
        ("epsilon_budget", 0.0),
        ("delta", 1.0),
        ("noise_multiplier", 0.0),
        ("max_grad_norm", -1.0),
        ("accountant", "moments"),
        ("grad_sample_mode", "ew"),
        ("max_physical_batch", -1),
    ]:
        with pytest.raises(ConfigError, match=f"privacy.{setting}"):
            PrivacyConfig(**{setting: value})
    with pytest.raises(ConfigError, match="privacy.max_physical_batch.*ghost"):
        PrivacyConfig(max_physical_batch=8, grad_sample_mode="ghost")


def test_delta_must_be_below_one_over_n(tmp_path):
    model = tiny()
    with pytest.raises(ConfigError, match="privacy.delta"):
        train_private(
            model,
            records(model, 8),
            diffusion=DIFFUSION,
            train=TrainConfig(steps=1, batch_size=4),
            privacy=PrivacyConfig(delta=0.2),
            ledger_path=tmp_path / "ledger.json",
            progress=False,
        )
    assert not (tmp_path / "ledger.json").exists()
