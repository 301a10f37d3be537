"""The local training loop shared by the centralised baseline, pretraining and each site (private or not).

Trains whatever parameters of the model require grad on clean sequences x0 [N, L]: every step draws a batch of
record indices, noises the batch (task mix, times), computes the diffusion loss, and hands it to an update rule
(:func:`train_local`: AdamW with gradient clipping; :mod:`medim.privacy`: DP-SGD). The learning rate follows
warmup + cosine. On CPU, bf16 autocast (fp32 master weights) is used when configured; glibc keeps freed memory
for the next step (:mod:`medim.malloc`). With ``proximal_mu > 0`` FedProx's proximal term pulls the trainable
tensors toward an anchor (:mod:`medim.proximal`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from medim.config import DiffusionConfig, TrainConfig
from medim.diffusion import Loss, NoisedBatch, add_noise, loss_from_nll
from medim.malloc import retain_freed_memory
from medim.model.medim import MeDiM
from medim.moments import Moments
from medim.proximal import ProximalTerm


@dataclass
class StepLog:
    """Loss of one logged step (batch means)."""

    step: int
    loss: float
    image: float
    text: float
    lr: float


@dataclass
class TrainResult:
    """What a training run did: steps taken, wall time, throughput, and the logged loss curve."""

    steps: int
    seconds: float
    tokens_per_second: float
    history: list[StepLog] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss if self.history else float("nan")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr`` over ``warmup_steps``, then cosine decay to 10% at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def compute_loss(model: MeDiM, batch: NoisedBatch, *, autocast_bf16: bool) -> Loss:
    """Forward pass and diffusion loss for a noised batch (bf16 autocast on the batch's device when asked).

    Scores only the masked target positions through :meth:`MeDiM.scored_nll` (region-split heads, no [B, L, V]
    logits); equal to ``diffusion_loss(model(xt, sigma), batch, vocab)`` up to floating-point rounding, and
    per-sample-gradient safe under Opacus (the model switches to batch-shaped heads while its hooks are on).
    """
    with torch.autocast(batch.xt.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        nll = model.scored_nll(batch.xt, batch.sigma, batch.x0, batch.masked & batch.target)
    return loss_from_nll(nll, batch, model.vocab)


def check_sequences(model: MeDiM, x0: torch.Tensor) -> None:
    """Raise ValueError unless x0 is a non-empty LongTensor [N, L] of the model's sequence length."""
    if x0.dim() != 2 or x0.shape[1] != model.vocab.seq_len:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected [N, {model.vocab.seq_len}]")
    if x0.shape[0] == 0:
        raise ValueError("no training sequences")


class ShuffledBatches:
    """Index draws LongTensor [batch_size] walking through reshuffled epochs of ``n`` records."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self.order = torch.randperm(n, generator=generator)
        self.cursor = 0

    def __call__(self) -> torch.Tensor:
        if self.cursor + self.batch_size > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        self.cursor += self.batch_size
        return self.order[self.cursor - self.batch_size : self.cursor]


def run_steps(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    optimizer: torch.optim.Optimizer,
    draw: Callable[[], torch.Tensor],
    update: Callable[[Loss | None], None],
    generator: torch.Generator,
    progress: bool,
    on_log: Callable[[StepLog], None] | None,
    desc: str = "train",
    max_rows: int = 0,
    accumulate: Callable[[Loss], None] | None = None,
) -> TrainResult:
    """The shared loop: ``train.steps`` steps (or ``max_minutes``) of draw -> noise -> loss -> update.

    Args:
        x0: LongTensor [N, L] of clean sequences.
        optimizer: its learning rate is set from :func:`lr_at` before every update.
        draw: returns the record indices of the next batch, LongTensor [B] (B may be 0 under Poisson sampling).
        update: takes the batch's loss (None for an empty batch) and does backward + optimizer step.
        generator: randomness of the diffusion noise (tasks, times, masks).
        max_rows: a batch of more records runs in chunks of at most ``max_rows`` (0 = never): ``accumulate``
            takes each chunk's loss but the last, ``update`` the last chunk's; the logged loss is the
            row-weighted mean over the chunks.
    """
    if max_rows and accumulate is None:
        raise ValueError("max_rows needs an accumulate rule for the chunks before the last")
    if train.threads:
        torch.set_num_threads(train.threads)
    retain_freed_memory()  # the steps reuse resident memory (medim.malloc)
    model.train()
    result = TrainResult(steps=0, seconds=0.0, tokens_per_second=0.0)
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(range(train.steps), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            idx = draw()
            lr = lr_at(step, train)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chunks = list(idx.split(max_rows)) if max_rows and len(idx) > max_rows else [idx]
            parts: list[tuple[int, Loss]] = []
            for rows in chunks[:-1]:
                parts.append((len(rows), _chunk_loss(model, x0[rows], diffusion, generator, train)))
                assert accumulate is not None
                accumulate(parts[-1][1])
            loss = None
            if len(idx) > 0:
                loss = _chunk_loss(model, x0[chunks[-1]], diffusion, generator, train)
                parts.append((len(chunks[-1]), loss))
                tokens += len(idx) * model.vocab.seq_len
            update(loss)
            result.steps = step + 1
            if loss is not None and (step % train.log_every == 0 or step == train.steps - 1):
                total, image, text = (
                    getattr(loss, key).item()
                    if len(parts) == 1
                    else sum(n * getattr(part, key).item() for n, part in parts) / len(idx)
                    for key in ("total", "image", "text")
                )
                log = StepLog(step, total, image, text, lr)
                result.history.append(log)
                bar.set_postfix(loss=f"{log.loss:.3f}")
                if on_log is not None:
                    on_log(log)
            if train.max_minutes and time.perf_counter() - start > 60 * train.max_minutes:
                break
    finally:
        bar.close()
        model.eval()
    result.seconds = time.perf_counter() - start
    result.tokens_per_second = tokens / max(result.seconds, 1e-9)
    return result


def _chunk_loss(
    model: MeDiM, x0: torch.Tensor, diffusion: DiffusionConfig, generator: torch.Generator, train: TrainConfig
) -> Loss:
    """Noise the records x0 [b, L] and return their diffusion loss."""
    batch = add_noise(x0, model.vocab, diffusion, generator=generator)
    return compute_loss(model, batch, autocast_bf16=train.autocast_bf16)


def train_local(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    proximal_mu: float = 0.0,
    anchor: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    on_log: Callable[[StepLog], None] | None = None,
    moments: Moments | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on x0 [N, L] for ``train.steps`` steps (or ``max_minutes``).

    Non-private: shuffled batches of ``train.batch_size``, AdamW, global gradient clipping at
    ``train.grad_clip``. With ``proximal_mu > 0`` the gradient ``mu * (w - anchor)`` is added after clipping;
    ``anchor`` (trainable-state keys) defaults to the trainable state at the start. ``moments``: AdamW starts
    from them and they are replaced by the final ones (:mod:`medim.moments`); None = a fresh optimizer.
    """
    check_sequences(model, x0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    if moments is not None:
        moments.load_into(optimizer, model)
    prox = ProximalTerm.for_model(model, mu=proximal_mu, anchor=anchor)
    generator = torch.Generator().manual_seed(train.seed)
    draw = ShuffledBatches(x0.shape[0], train.batch_size, generator)

    def update(loss: Loss | None) -> None:
        assert loss is not None, "shuffled batches are never empty"
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        if prox is not None:
            prox.add_grad()
        optimizer.step()

    result = run_steps(
        model,
        x0,
        diffusion=diffusion,
        train=train,
        optimizer=optimizer,
        draw=draw,
        update=update,
        generator=generator,
        progress=progress,
        on_log=on_log,
    )
    if moments is not None:
        moments.tensors = Moments.read_from(optimizer, model).tensors
    return result
