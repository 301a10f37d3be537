"""The local training loop shared by the centralised baseline, pretraining and (later) each site.

Trains whatever parameters of the model require grad on clean sequences x0 [N, L]: every step samples a batch,
noises it (task mix, times), computes the diffusion loss, and takes an AdamW step with warmup + cosine learning
rate and gradient clipping. On CPU, bf16 autocast (fp32 master weights) is used when configured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from medim.config import DiffusionConfig, TrainConfig
from medim.diffusion import Loss, NoisedBatch, add_noise, diffusion_loss
from medim.model.medim import MeDiM


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
    """Forward pass and diffusion loss for a noised batch (bf16 autocast on CPU when asked)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        logits = model(batch.xt, batch.sigma)
    return diffusion_loss(logits, batch, model.vocab)


def train_local(
    model: MeDiM,
    x0: torch.Tensor,
    *,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    progress: bool = True,
    on_log: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on x0 [N, L] for ``train.steps`` steps (or ``max_minutes``)."""
    if x0.dim() != 2 or x0.shape[1] != model.vocab.seq_len:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected [N, {model.vocab.seq_len}]")
    if x0.shape[0] == 0:
        raise ValueError("no training sequences")
    if train.threads:
        torch.set_num_threads(train.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(train.seed)
    model.train()
    result = TrainResult(steps=0, seconds=0.0, tokens_per_second=0.0)
    start = time.perf_counter()
    order = torch.randperm(x0.shape[0], generator=generator)
    cursor = 0
    bar = tqdm(range(train.steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if cursor + train.batch_size > len(order):
            order, cursor = torch.randperm(x0.shape[0], generator=generator), 0
        idx = order[cursor : cursor + train.batch_size]
        cursor += train.batch_size
        batch = add_noise(x0[idx], model.vocab, diffusion, generator=generator)
        lr = lr_at(step, train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = compute_loss(model, batch, autocast_bf16=train.autocast_bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        result.steps = step + 1
        if step % train.log_every == 0 or step == train.steps - 1:
            log = StepLog(step, loss.total.item(), loss.image.item(), loss.text.item(), lr)
            result.history.append(log)
            bar.set_postfix(loss=f"{log.loss:.3f}")
            if on_log is not None:
                on_log(log)
        if train.max_minutes and time.perf_counter() - start > 60 * train.max_minutes:
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    result.tokens_per_second = (
        result.steps * train.batch_size * model.vocab.seq_len / max(result.seconds, 1e-9)
    )
    model.eval()
    return result
