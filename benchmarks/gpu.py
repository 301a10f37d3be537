"""Issue item 8: a `liquid-7b`-shaped site step on one GPU, MFU against the device's measured bf16 ceiling.

``python -m benchmarks.gpu --out runs/bench-gpu.json`` (under 5 minutes on one H200): random weights in the shape
of the paper's backbone (Gemma-7B body: hidden 3,072, 16 heads, MLP 24,576; the first 10 layers), 1,280 tokens
per record (1,024 image codes + 254 report tokens + 2 markers), frozen weights in bf16 under bf16 autocast, LoRA
r=16 + the time modules (time MLP and AdaLN, ``site_trains: [lora, time, adaln]``) trainable in fp32; forward +
backward + AdamW. Reports seconds per step, the needed FLOPs of the step (``train_throughput.step_flops``: frozen
weights need no weight gradients, heads only at scored positions), MFU over the bf16 matmul ceiling measured on
the same device just before, and peak device memory. Differences from Liquid itself, stated: the text vocabulary
is medim's own (4,097 rows, not Gemma's 256,000) and the head dimension is hidden / heads = 192 (Gemma-7B: 256).

``--shape tiny`` runs the same code path on CPU with a tiny shape (the test in ``tests/unit/test_perf_paths.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

import medim
from benchmarks.machine import describe, matmul_flops, peak_rss_gb
from benchmarks.train_throughput import records, step_flops
from medim.config import DiffusionConfig
from medim.diffusion import NoisedBatch, add_noise
from medim.model.medim import MeDiM
from medim.train import compute_loss

TARGET_MFU = 0.35
SHAPES: dict[str, dict[str, Any]] = {
    "liquid-7b": {
        "pretrained_path": None,
        "hidden_size": 3072,
        "num_layers": 10,
        "num_heads": 16,
        "num_kv_heads": 16,
        "intermediate_size": 24576,
        "text_tokens": 254,
        "site_trains": ["lora", "time", "adaln"],
    },
    "tiny": {
        "pretrained_path": None,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 4,
        "intermediate_size": 128,
        "codebook_size": 64,
        "image_tokens": 16,
        "text_tokens": 14,
        "site_trains": ["lora", "time", "adaln"],
    },
}


def build(shape: str, device: torch.device) -> MeDiM:
    """The ``liquid-7b`` preset with ``SHAPES[shape]`` (random weights): frozen tensors bf16, trainable fp32."""
    model = medim.build_model("liquid-7b", seed=0, lora=True, **SHAPES[shape]).to(device).train()
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    return model


def to_device(batch: NoisedBatch, device: torch.device) -> NoisedBatch:
    """The batch's tensors moved to ``device`` (noise is drawn on CPU with a seeded generator)."""
    return replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in fields(batch)})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated device memory (CUDA), or this process's peak RSS (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gb()


def run(shape: str, *, batch_size: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Warm-up step, then ``steps`` timed steps; the ceiling is measured first on the same device."""
    ceiling_size = 8192 if device.type == "cuda" else 512
    ceiling = matmul_flops(torch.bfloat16, size=ceiling_size, seconds=2.0, device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build(shape, device)
    x0 = records(model, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    diffusion = DiffusionConfig()

    def step() -> NoisedBatch:
        batch = to_device(add_noise(x0, model.vocab, diffusion, generator=g), device)
        loss = compute_loss(model, batch, autocast_bf16=True)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        return batch

    step()
    synchronize(device)
    times, needed = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        needed.append(step_flops(model, batch)[0])
    per_step = statistics.median(times)
    flops = statistics.median(n / t for n, t in zip(needed, times, strict=True))
    return {
        "shape": shape,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "batch_size": batch_size,
        "seq_len": model.vocab.seq_len,
        "layers": model.backbone.config.num_hidden_layers,
        "trainable_parameters": sum(p.numel() for p in params),
        "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "seconds_per_step": per_step,
        "achieved_flops": flops,
        "ceiling_bf16_flops": ceiling,
        "mfu": flops / ceiling,
        "target_mfu": TARGET_MFU,
        "peak_memory_gb": peak_memory_gb(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="liquid-7b")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-gpu.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.shape == "liquid-7b" and device.type != "cuda":
        parser.error("the liquid-7b shape needs a GPU (--device cuda); use --shape tiny on CPU")
    result = {
        "machine": describe(),
        **run(args.shape, batch_size=args.batch_size, steps=args.steps, device=device),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    met = "met" if result["mfu"] >= TARGET_MFU else "NOT met"
    print(
        f"{result['shape']} on {result['gpu'] or result['device']}: {result['seconds_per_step']:.3f} s/step "
        f"(batch {args.batch_size} x {result['seq_len']} tokens), MFU {result['mfu']:.3f} (>= {TARGET_MFU} "
        f"{met}) of {result['ceiling_bf16_flops'] / 1e12:.1f} TFLOP/s bf16, peak memory "
        f"{result['peak_memory_gb']:.1f} GiB -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
