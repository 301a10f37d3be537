"""Training throughput of a site's local step: model FLOP utilisation against the measured bf16 matmul ceiling.

The step is what a site runs without DP: LoRA model (``apply_lora``), a batch of records, bf16 autocast,
:func:`medim.train.compute_loss` (heads only at scored positions), backward, global clipping, AdamW (foreach).
Steps and short ceiling measurements alternate, so load from other jobs hits both alike; the MFU is the median
achieved FLOP/s over the median ceiling.

FLOPs counted (:func:`step_flops`) are the ones the step *needs*: forward matmuls of every layer and attention,
input gradients everywhere (trainable tensors sit in every layer), weight gradients of the trainable tensors only
(frozen weights need none), heads only at the scored positions over the ids the position may emit. The
conventional ``6 N`` count (every weight trained, full heads at every position) is reported beside it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

import medim
from benchmarks.machine import matmul_flops
from medim.config import DiffusionConfig
from medim.diffusion import NoisedBatch, add_noise
from medim.malloc import retain_freed_memory
from medim.model.medim import MeDiM
from medim.train import compute_loss


@dataclass
class Throughput:
    preset: str
    batch_size: int
    seq_len: int
    threads: int
    seconds_per_step: float
    tokens_per_second: float
    needed_flops_per_step: float
    flops_6n_per_step: float
    achieved_flops: float
    ceiling_bf16_flops: float
    mfu: float
    mfu_6n: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def records(model: MeDiM, n: int, seed: int = 0) -> torch.Tensor:
    """x0 [n, L]: random image codes and 40-token reports."""
    vocab = model.vocab
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, vocab.codebook_size, (vocab.image_tokens,), generator=g) for _ in range(n)]
    return torch.stack([vocab.sequence(c, [5 + i % 50 for i in range(40)]) for c in codes])


def step_flops(model: MeDiM, batch: NoisedBatch) -> tuple[float, float]:
    """(needed FLOPs, conventional 6N FLOPs) of one training step on ``batch`` (see the module docstring)."""
    cfg, vocab = model.backbone.config, model.vocab
    b, length = batch.xt.shape
    tokens = b * length
    frozen = trainable = 0
    for p in model.backbone.model.layers.parameters():
        if p.dim() == 2:
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    hidden = cfg.hidden_size
    attention_fwd = 4 * cfg.num_hidden_layers * length * length * hidden * b
    scored = batch.masked & batch.target
    n_img = int(scored[:, vocab.image_slice].sum())
    n_txt = int(scored[:, vocab.text_slice].sum())
    text_head_fwd = 2 * hidden * n_txt * vocab.text_size
    new_head_fwd = 2 * hidden * (n_img * vocab.codebook_size + 2 * n_txt)
    new_head_weight_grad = new_head_fwd if model.new_head.weight.requires_grad else 0
    needed = (
        2 * (2 * frozen * tokens)
        + 3 * (2 * trainable * tokens)
        + 3 * attention_fwd
        + 2 * text_head_fwd
        + 2 * new_head_fwd
        + new_head_weight_grad
    )
    conventional = 6 * (frozen + trainable + hidden * vocab.size) * tokens + 3 * attention_fwd
    return float(needed), float(conventional)


def measure(
    preset: str,
    *,
    batch_size: int = 16,
    steps: int = 5,
    threads: int = 1,
    lora: bool = True,
    overrides: dict[str, object] | None = None,
) -> Throughput:
    """Median of ``steps`` timed local steps (after one warm-up), each followed by a 0.3 s ceiling block."""
    torch.set_num_threads(threads)
    retain_freed_memory()  # as the training loop does (medim.malloc)
    model = medim.build_model(preset, seed=0, lora=lora, **(overrides or {})).train()
    x0 = records(model, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    diffusion = DiffusionConfig()
    g = torch.Generator().manual_seed(0)

    def step() -> NoisedBatch:
        batch = add_noise(x0, model.vocab, diffusion, generator=g)
        loss = compute_loss(model, batch, autocast_bf16=True)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        return batch

    step()
    times, achieved, conventional, ceilings = [], [], [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = step()
        seconds = time.perf_counter() - start
        needed, six_n = step_flops(model, batch)
        times.append(seconds)
        achieved.append(needed / seconds)
        conventional.append(six_n / seconds)
        ceilings.append(matmul_flops(torch.bfloat16, seconds=0.3))
    ceiling = statistics.median(ceilings)
    per_step = statistics.median(times)
    tokens = batch_size * model.vocab.seq_len
    return Throughput(
        preset=preset,
        batch_size=batch_size,
        seq_len=model.vocab.seq_len,
        threads=threads,
        seconds_per_step=per_step,
        tokens_per_second=tokens / per_step,
        needed_flops_per_step=statistics.median(a * t for a, t in zip(achieved, times, strict=True)),
        flops_6n_per_step=statistics.median(c * t for c, t in zip(conventional, times, strict=True)),
        achieved_flops=statistics.median(achieved),
        ceiling_bf16_flops=ceiling,
        mfu=statistics.median(achieved) / ceiling,
        mfu_6n=statistics.median(conventional) / ceiling,
    )
