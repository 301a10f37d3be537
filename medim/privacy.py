"""DP-SGD for site training: configuration, budget guard and the private local training run.

Privacy unit: **one record = one image-report pair** (one row of the site's x0 [N, L]). The guarantee is
(epsilon, delta)-DP with respect to adding or removing one record of the site's training set, for everything the
site releases from its training (the trainable-state updates of every round), accounted over all rounds the site
has ever trained (the ledger, :mod:`medim.privacy_ledger`).

One round of :func:`train_private`:

1. load the ledger from ``ledger_path`` (missing = fresh site; unreadable = error naming the file);
2. budget guard: epsilon after ledger + ``train.steps`` planned steps at sample rate ``q = batch_size / N``;
   above ``privacy.epsilon_budget`` -> refuse: no training, model and ledger untouched, result says why;
3. write the planned steps to the ledger first (a crash mid-round still counts them), then train: Poisson
   batches (each record independently with probability q), per-sample gradients (Opacus), flat per-sample
   clipping at ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm`` on the sum, division by
   the expected batch size, AdamW (post-processing) with warmup + cosine learning rate;
4. write the steps actually taken (counted by the Opacus accountant) and return epsilon.

``train.grad_clip`` does not apply under DP (``privacy.max_grad_norm`` is the per-sample clip).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from opacus.accountants import IAccountant, create_accountant
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from medim.config import DiffusionConfig, TrainConfig, check, check_choice, check_positive
from medim.diffusion import Loss
from medim.model.medim import MeDiM
from medim.moments import Moments
from medim.privacy_ledger import ACCOUNTANTS, LedgerEntry, PrivacyLedger
from medim.privacy_sgd import GRAD_SAMPLE_MODES, privatize
from medim.proximal import ProximalTerm
from medim.train import StepLog, TrainResult, check_sequences, run_steps, train_local


@dataclass
class PrivacyConfig:
    """DP-SGD settings of a site (``configs/dp/``). Privacy unit: one image-report pair.

    ``max_physical_batch`` bounds the records one forward/backward holds (the site's memory): a Poisson batch
    above it runs in chunks whose clipped per-sample gradients are summed before the one noise draw and step --
    the same DP step and accounting, memory of a chunk (0 = the whole batch at once; not with ghost clipping).

    ``delta`` must also be below 1/N for the site's N records (checked when training). ``seed`` fixes the
    Poisson sampling and the noise: for tests and reproducible experiments only -- anyone who knows it can
    remove the noise, so leave it ``None`` (fresh OS entropy every round) for real sites.
    """

    enabled: bool = True
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"
    seed: int | None = None
    max_physical_batch: int = 0

    def __post_init__(self) -> None:
        check(
            self.epsilon_budget > 0 and math.isfinite(self.epsilon_budget),
            "privacy.epsilon_budget",
            self.epsilon_budget,
            "a finite number > 0",
        )
        check(0 < self.delta < 1, "privacy.delta", self.delta, "(0, 1), and below 1/N for N site records")
        check(
            self.noise_multiplier > 0,
            "privacy.noise_multiplier",
            self.noise_multiplier,
            "> 0 (set privacy.enabled=false to train without DP)",
        )
        check_positive("privacy.max_grad_norm", self.max_grad_norm)
        check_choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        check_choice("privacy.grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        check(self.seed is None or self.seed >= 0, "privacy.seed", self.seed, "null or >= 0")
        check(
            self.max_physical_batch >= 0,
            "privacy.max_physical_batch",
            self.max_physical_batch,
            ">= 0 (0 = no limit)",
        )
        check(
            not (self.max_physical_batch and self.grad_sample_mode == "ghost"),
            "privacy.max_physical_batch",
            self.max_physical_batch,
            "0 with grad_sample_mode=ghost (chunked batches need per-sample gradients: hooks or functorch)",
        )


@dataclass
class PrivateTrainResult:
    """One site round: what was trained (as :class:`medim.train.TrainResult`) and the privacy spent.

    ``epsilon`` is the site's total at ``delta`` over all its rounds (``inf`` once it trained without DP);
    ``refused`` rounds trained nothing and say why in ``reason``.
    """

    steps: int
    seconds: float
    tokens_per_second: float
    epsilon: float
    delta: float
    epsilon_budget: float
    refused: bool
    reason: str | None
    sample_rate: float
    noise_multiplier: float
    num_examples: int
    rounds: int
    history: list[StepLog] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss if self.history else float("nan")


def check_records(privacy: PrivacyConfig, train: TrainConfig, n: int) -> None:
    """Raise ConfigError unless delta < 1/N and the batch size fits the N records."""
    check(privacy.delta < 1 / n, "privacy.delta", privacy.delta, f"< 1/N = {1 / n:.3g} (N={n} site records)")
    check(train.batch_size <= n, "train.batch_size", train.batch_size, f"<= N={n} site records under DP")


def _generator(seed: int | None, stream: int) -> torch.Generator:
    """A torch generator from ``seed`` (stream-separated) or from fresh OS entropy."""
    base = secrets.randbits(62) if seed is None else seed
    return torch.Generator().manual_seed(base * 2 + stream)


def train_private(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    privacy: PrivacyConfig,
    ledger_path: str | Path,
    proximal_mu: float = 0.0,
    anchor: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    on_log: Callable[[StepLog], None] | None = None,
    moments: Moments | None = None,
) -> PrivateTrainResult:
    """Train ``model``'s trainable tensors on this site's records x0 [N, L] under DP-SGD (one round).

    Args:
        model: built, placed and LoRA-wrapped (:func:`medim.model.lora.apply_lora`) before this call.
        x0: LongTensor [N, L], one row per image-report pair (the privacy unit).
        privacy: DP settings; with ``enabled=False`` trains without DP (:func:`medim.train.train_local`) and
            records a non-private round in the ledger (the site's epsilon becomes infinite).
        ledger_path: the site's ledger JSON (created on the first round).
        proximal_mu, anchor: FedProx term ``mu/2 ||w - anchor||^2`` (anchor: trainable-state keys; default the
            state at the start); data-independent, so it is added after clipping and noise.
        moments: the site's AdamW state from its last round (:mod:`medim.moments`), replaced by this round's;
            post-processing of the noised gradients, so it costs no privacy. None = a fresh optimizer.

    Raises:
        ConfigError: delta >= 1/N or batch_size > N.
        medim.privacy_ledger.LedgerError: the ledger file is unreadable or has other accounting settings.
    """
    check_sequences(model, x0)
    n = int(x0.shape[0])
    ledger = PrivacyLedger.load(ledger_path, accountant=privacy.accountant, delta=privacy.delta)
    if not privacy.enabled:
        plain = train_local(
            model,
            x0,
            diffusion=diffusion,
            train=train,
            proximal_mu=proximal_mu,
            anchor=anchor,
            progress=progress,
            on_log=on_log,
            moments=moments,
        )
        ledger = ledger.with_non_private_round()
        ledger.save()
        return _result(plain, ledger, privacy, sample_rate=min(1.0, train.batch_size / n), sigma=0.0, n=n)
    check_records(privacy, train, n)
    sample_rate = train.batch_size / n
    planned = LedgerEntry(privacy.noise_multiplier, sample_rate, train.steps)
    spent, reach = ledger.epsilon(), ledger.epsilon(planned)
    if reach > privacy.epsilon_budget:
        reason = (
            f"privacy budget: this round ({train.steps} steps, sample rate {sample_rate:.4g}, noise multiplier "
            f"{privacy.noise_multiplier}) would take epsilon from {spent:.4g} to {reach:.4g} at delta="
            f"{privacy.delta:g}, above privacy.epsilon_budget={privacy.epsilon_budget:g}"
        )
        if ledger.non_private_rounds:
            reason += (
                f" (this site trained {ledger.non_private_rounds} round(s) without DP: no finite guarantee)"
            )
        empty = TrainResult(steps=0, seconds=0.0, tokens_per_second=0.0)
        return _result(
            empty,
            ledger,
            privacy,
            sample_rate=sample_rate,
            sigma=privacy.noise_multiplier,
            n=n,
            reason=reason,
        )
    prox = ProximalTerm.for_model(model, mu=proximal_mu, anchor=anchor)
    ledger.with_round([*ledger.history, planned]).save()  # write-ahead: a crash mid-round still counts
    accountant = create_accountant(privacy.accountant)
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.history]
    plain = _dp_steps(
        model,
        x0,
        diffusion=diffusion,
        train=train,
        privacy=privacy,
        sample_rate=sample_rate,
        prox=prox,
        accountant=accountant,
        progress=progress,
        on_log=on_log,
        moments=moments,
    )
    ledger = ledger.with_round([LedgerEntry(float(s), float(q), int(k)) for s, q, k in accountant.history])
    ledger.save()
    return _result(plain, ledger, privacy, sample_rate=sample_rate, sigma=privacy.noise_multiplier, n=n)


def _dp_steps(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    privacy: PrivacyConfig,
    sample_rate: float,
    prox: ProximalTerm | None,
    accountant: IAccountant,
    progress: bool,
    on_log: Callable[[StepLog], None] | None,
    moments: Moments | None,
) -> TrainResult:
    """The DP-SGD loop; every step the optimizer took is added to ``accountant``'s history."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    if moments is not None:
        moments.load_into(optimizer, model)
    session = privatize(
        model,
        optimizer,
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=train.batch_size,
        grad_sample_mode=privacy.grad_sample_mode,
        noise_generator=_generator(privacy.seed, 1),
    )
    session.optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    sampler = UniformWithReplacementSampler(
        num_samples=x0.shape[0],
        sample_rate=sample_rate,
        generator=_generator(privacy.seed, 0),
        steps=train.steps,
    )
    batches = iter(sampler)

    def update(loss: Loss | None) -> None:
        session.backward(None if loss is None else loss.per_sample)
        session.step(prox)

    def accumulate(loss: Loss) -> None:
        session.accumulate(loss.per_sample)

    try:
        result = run_steps(
            model,
            x0,
            diffusion=diffusion,
            train=train,
            optimizer=session.optimizer,
            draw=lambda: torch.tensor(next(batches), dtype=torch.long),
            update=update,
            generator=torch.Generator().manual_seed(train.seed),
            progress=progress,
            on_log=on_log,
            desc="train (DP)",
            max_rows=privacy.max_physical_batch,
            accumulate=accumulate,
        )
    finally:
        session.close()
    if moments is not None:
        moments.tensors = Moments.read_from(optimizer, model).tensors
    return result


def _result(
    run: TrainResult,
    ledger: PrivacyLedger,
    privacy: PrivacyConfig,
    *,
    sample_rate: float,
    sigma: float,
    n: int,
    reason: str | None = None,
) -> PrivateTrainResult:
    return PrivateTrainResult(
        steps=run.steps,
        seconds=run.seconds,
        tokens_per_second=run.tokens_per_second,
        epsilon=ledger.epsilon(),
        delta=privacy.delta,
        epsilon_budget=privacy.epsilon_budget,
        refused=reason is not None,
        reason=reason,
        sample_rate=sample_rate,
        noise_multiplier=sigma,
        num_examples=n,
        rounds=ledger.rounds,
        history=run.history,
    )
