"""Training throughput of a preset: tokens/s and model FLOP utilisation against the measured bf16 ceiling."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

import medim
from medim.config import DiffusionConfig
from medim.diffusion import add_noise
from medim.model.medim import MeDiM
from medim.train import compute_loss


@dataclass
class Throughput:
    preset: str
    batch_size: int
    seq_len: int
    autocast_bf16: bool
    seconds_per_step: float
    tokens_per_second: float
    model_flops_per_step: float
    achieved_flops: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def train_flops_per_token(model: MeDiM) -> float:
    """Model FLOPs of one training token: 6 x matmul parameters (layers + heads) + attention scores/values."""
    matmul_params = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed" not in name and not name.startswith(("time.", "adaln."))
    )
    cfg = model.backbone.config
    attention = 12 * cfg.num_hidden_layers * model.vocab.seq_len * cfg.hidden_size
    return 6 * matmul_params + attention


def measure(preset: str, *, batch_size: int = 16, steps: int = 5, autocast_bf16: bool = True) -> Throughput:
    """Time ``steps`` full training steps (forward, backward, AdamW) after one warm-up step."""
    model = medim.build_model(preset, seed=0).train()
    vocab = model.vocab
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack(
        [
            vocab.sequence(
                torch.randint(0, vocab.codebook_size, (vocab.image_tokens,), generator=g), [5] * 40
            )
            for _ in range(batch_size)
        ]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    diffusion = DiffusionConfig()

    def step() -> None:
        batch = add_noise(x0, vocab, diffusion, generator=g)
        loss = compute_loss(model, batch, autocast_bf16=autocast_bf16)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    tokens = batch_size * vocab.seq_len
    flops = train_flops_per_token(model) * tokens
    return Throughput(
        preset, batch_size, vocab.seq_len, autocast_bf16, per_step, tokens / per_step, flops, flops / per_step
    )
