"""`python -m benchmarks [--out FILE] [--quick]`: measured speed figures as one JSON file plus a short table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.machine import describe, matmul_flops
from benchmarks.train_throughput import measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (under two minutes)")
    parser.add_argument("--preset", default="small")
    args = parser.parse_args(argv)

    ceiling_bf16 = matmul_flops(torch.bfloat16)
    ceiling_fp32 = matmul_flops(torch.float32)
    steps = 3 if args.quick else 10
    bf16 = measure(args.preset, steps=steps, autocast_bf16=True)
    fp32 = measure(args.preset, steps=steps, autocast_bf16=False)
    figures = {
        "mfu": bf16.achieved_flops / ceiling_bf16,
        "train_tokens_per_second": bf16.tokens_per_second,
        "bf16_speedup_over_fp32": fp32.seconds_per_step / bf16.seconds_per_step,
    }
    result = {
        "machine": describe(),
        "ceilings": {"bf16_matmul_flops": ceiling_bf16, "fp32_matmul_flops": ceiling_fp32},
        "train": {"bf16": bf16.as_dict(), "fp32": fp32.as_dict()},
        "figures": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'figure':<28}{'value':>14}")
    for name, value in figures.items():
        print(f"{name:<28}{value:>14.3f}")
    print(
        f"(bf16 ceiling {ceiling_bf16 / 1e9:.1f} GFLOP/s, fp32 {ceiling_fp32 / 1e9:.1f} GFLOP/s) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
