"""`python -m benchmarks.dp_modes [--preset small] [--steps 6] [--out FILE]`: DP-SGD step time per grad_sample_mode.

Times full private steps (a batch of ``--batch`` records, forward under bf16 autocast, per-sample gradients,
clipping, noise, AdamW) for Opacus' "hooks", "functorch" and "ghost" modes next to the plain non-private step
(global clip, AdamW), one torch thread. The modes run round-robin in one process, one model each, so that load
from other jobs on a shared machine hits them alike; the median step time per mode is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import medim
from benchmarks.machine import describe
from medim.config import DiffusionConfig
from medim.diffusion import add_noise
from medim.malloc import retain_freed_memory
from medim.model.lora import apply_lora
from medim.privacy_sgd import privatize
from medim.train import compute_loss

MODES = ("plain", "hooks", "functorch", "ghost")


def make_step(mode: str, preset: str, batch: int) -> tuple[Callable[[], None], int]:
    """A closure doing one training step of ``mode`` on its own model, and the trainable parameter count."""
    model = apply_lora(medim.build_model(preset, seed=0)).train()
    vocab = model.vocab
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack(
        [
            vocab.sequence(
                torch.randint(0, vocab.codebook_size, (vocab.image_tokens,), generator=g), [5] * 40
            )
            for _ in range(batch)
        ]
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    session = None
    if mode != "plain":
        session = privatize(
            model,
            opt,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            grad_sample_mode=mode,
            noise_generator=torch.Generator().manual_seed(1),
        )
    diffusion = DiffusionConfig()

    def step() -> None:
        loss = compute_loss(model, add_noise(x0, vocab, diffusion, generator=g), autocast_bf16=True)
        if session is None:
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        else:
            session.backward(loss.per_sample)
            session.step()

    return step, sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dp_modes", description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-dp-modes.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    retain_freed_memory()  # as the training loop does (medim.malloc)
    steps: dict[str, Callable[[], None]] = {}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    trainable = 0
    for mode in MODES:
        steps[mode], trainable = make_step(mode, args.preset, args.batch)
        steps[mode]()  # warm-up
    for _ in range(args.steps):
        for mode in MODES:
            start = time.perf_counter()
            steps[mode]()
            times[mode].append(time.perf_counter() - start)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    rows = [
        {
            "mode": mode,
            "median_seconds_per_step": medians[mode],
            "slowdown_vs_plain": medians[mode] / medians["plain"],
            "seconds_per_step": times[mode],
        }
        for mode in MODES
    ]
    result = {
        "machine": describe(),
        "preset": args.preset,
        "batch": args.batch,
        "autocast_bf16": True,
        "trainable_parameters": trainable,
        "modes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'mode':<10}{'median s/step':>14}{'x plain':>9}")
    for row in rows:
        print(f"{row['mode']:<10}{row['median_seconds_per_step']:>14.3f}{row['slowdown_vs_plain']:>9.2f}")
    print(f"trainable parameters: {trainable:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
