"""`python -m benchmarks.dp_modes [--preset small] [--steps 4] [--out FILE]`: DP-SGD step time per grad_sample_mode.

Times full private steps (Poisson batch of expected size ``--batch``, forward under bf16 autocast, per-sample
gradients, clipping, noise, AdamW) for Opacus' "hooks", "functorch" and "ghost" modes, next to the plain
non-private step, each in a fresh process (so peak RSS is per mode), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MODES = ("plain", "hooks", "functorch", "ghost")


def run_mode(mode: str, preset: str, batch: int, steps: int) -> dict[str, object]:
    """Seconds per step of ``mode`` after one warm-up step (fixed batch of ``batch`` records)."""
    import medim
    from medim.config import DiffusionConfig
    from medim.diffusion import add_noise
    from medim.model.lora import apply_lora
    from medim.privacy_sgd import privatize
    from medim.train import compute_loss

    torch.set_num_threads(1)
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

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    return {
        "mode": mode,
        "seconds_per_step": per_step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_parameters": sum(p.numel() for p in params),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dp_modes", description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-dp-modes.json"))
    parser.add_argument("--mode", choices=MODES, help="(internal) run one mode and print its JSON")
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.preset, args.batch, args.steps)))
        return 0
    from benchmarks.machine import describe

    rows = []
    for mode in MODES:
        cmd = [sys.executable, "-m", "benchmarks.dp_modes", "--mode", mode, "--preset", args.preset]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    plain = float(rows[0]["seconds_per_step"])
    for row in rows:
        row["slowdown_vs_plain"] = float(row["seconds_per_step"]) / plain
    result = {"machine": describe() | {"torch_threads": 1}, "preset": args.preset, "batch": args.batch}
    result["modes"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'mode':<10}{'s/step':>10}{'x plain':>9}{'peak MiB':>10}")
    for row in rows:
        print(
            f"{row['mode']:<10}{row['seconds_per_step']:>10.3f}{row['slowdown_vs_plain']:>9.2f}"
            f"{row['peak_rss_mib']:>10.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
