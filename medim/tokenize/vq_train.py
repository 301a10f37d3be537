"""Training loop of the VQ tokenizer: checkpoints, resume, dead-code restarts, final reconstruction report.

Loss: MSE + ``l1_weight`` * L1 on pixels + the quantiser's codebook/commitment loss. No perceptual or
adversarial term (see docs/tokenizer.md). AdamW, linear warm-up then cosine decay to 10% of ``lr``.
Batch ``s`` is drawn with a generator seeded by (seed, s), so a resumed run sees the same batches as an
uninterrupted one.

Output folder: ``tokenizer.safetensors`` + ``tokenizer.json`` (the tokenizer, loadable at every
checkpoint), ``train_state.safetensors`` + ``train_state.json`` (optimizer moments, code-usage window, step),
``reconstruction.json`` + ``reconstruction.png`` at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from medim.tokenize.vq import META_FILE, VQTokenizer, load_state_checked, read_meta, write_json
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_data import HELD_OUT, ImageSet, load_images
from medim.tokenize.vq_report import ReconstructionReport, reconstruction_report

STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"


@dataclass
class TrainResult:
    """Where a training run ended: ``step`` reached, ``start_step`` (> 0 when resumed), last batch loss."""

    out: Path
    step: int
    start_step: int
    loss: float
    seconds: float
    report: ReconstructionReport


def lr_at(step: int, *, lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` down to ``0.1 * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random source of one training step (batch choice, restarts): a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_train_state(
    out: Path, model: VQTokenizer, optimizer: torch.optim.Optimizer, usage: torch.Tensor, *, step: int
) -> None:
    """Checkpoint: the tokenizer files plus optimizer moments and the code-usage window (all safetensors)."""
    model.save(out, step=step)
    tensors: dict[str, torch.Tensor] = {"usage": usage.contiguous()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).contiguous()
    tmp = out / (STATE_FILE + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, out / STATE_FILE)
    write_json(out / STATE_META, {"step": step, "architecture": model.config.architecture()})


def load_train_state(
    out: Path, model: VQTokenizer, optimizer: torch.optim.Optimizer, usage: torch.Tensor
) -> int:
    """Restore a checkpoint written by :func:`save_train_state` into the given objects; returns its step.

    Raises when the saved architecture differs from ``model.config`` (the error names the folder)."""
    meta = json.loads((out / STATE_META).read_text())
    if meta["architecture"] != model.config.architecture():
        raise ValueError(
            f"{out / STATE_META}: checkpoint was trained with a different tokenizer architecture "
            f"({meta['architecture']}); use another --out folder or the same preset"
        )
    saved = load_file(str(out / "tokenizer.safetensors"))
    load_state_checked(model, saved, source=str(out / "tokenizer.safetensors"))
    tensors = load_file(str(out / STATE_FILE))
    usage.copy_(tensors.pop("usage"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return int(meta["step"])


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, l1_weight: float) -> torch.Tensor:
    """MSE + ``l1_weight`` * L1 between reconstructions and targets [B,C,H,W] (float32)."""
    recon = recon.float()
    return F.mse_loss(recon, images) + l1_weight * F.l1_loss(recon, images)


def train_tokenizer(
    config: TokenizerConfig,
    data: list[Path],
    out: str | Path,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a tokenizer on split ``train`` of the prepared folders ``data``; write checkpoints and
    the reconstruction report on splits validate/test into ``out``."""
    tcfg = config.train
    out = Path(out)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    train_set = load_images(data, ("train",), config.resolution)
    heldout = load_images(data, HELD_OUT, config.resolution)
    names = ", ".join(str(d) for d in data)
    if len(train_set) == 0:
        raise ValueError(f"no images with split 'train' in {names}")
    if len(heldout) == 0:
        raise ValueError(f"no held-out images (split validate/test) in {names} for the reconstruction report")

    torch.manual_seed(tcfg.seed)
    model = VQTokenizer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    usage = torch.zeros(config.codebook_size, dtype=torch.float64)
    start = 0
    if (out / STATE_META).is_file() and (out / META_FILE).is_file():
        read_meta(out)
        start = load_train_state(out, model, optimizer, usage)
    out.mkdir(parents=True, exist_ok=True)

    began = time.monotonic()
    step, loss_value = start, float("nan")
    model.train()
    bar = tqdm(total=tcfg.steps, initial=start, desc="tokenizer", disable=not progress, dynamic_ncols=True)
    while step < tcfg.steps:
        loss_value = _train_step(model, optimizer, train_set, usage, config, step)
        step += 1
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            used = int((usage > 0).sum())
            bar.set_postfix(loss=f"{loss_value:.4f}", codes=f"{used}/{config.codebook_size}")
        out_of_time = tcfg.max_minutes > 0 and (time.monotonic() - began) / 60 >= tcfg.max_minutes
        if step % tcfg.checkpoint_every == 0 or step == tcfg.steps or out_of_time:
            save_train_state(out, model, optimizer, usage, step=step)
        if out_of_time:
            bar.write(f"tokenizer: stopping at step {step}: train.max_minutes={tcfg.max_minutes} reached")
            break
    bar.close()
    report = reconstruction_report(model, heldout, out, step=step)
    return TrainResult(
        out=out,
        step=step,
        start_step=start,
        loss=loss_value,
        seconds=time.monotonic() - began,
        report=report,
    )


def _train_step(
    model: VQTokenizer,
    optimizer: torch.optim.Optimizer,
    train_set: ImageSet,
    usage: torch.Tensor,
    config: TokenizerConfig,
    step: int,
) -> float:
    """One optimisation step on a batch drawn by :func:`step_generator`; restarts dead codes every
    ``restart_every`` steps (codes used at most ``restart_min_usage`` times in the window). Returns the loss."""
    tcfg = config.train
    gen = step_generator(tcfg.seed, step)
    images = train_set.batch(torch.randint(0, len(train_set), (tcfg.batch_size,), generator=gen))
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, lr=tcfg.lr, warmup=tcfg.warmup_steps, total=tcfg.steps)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=tcfg.autocast_bf16):
        result = model(images)
    loss = reconstruction_loss(result.reconstruction, images, tcfg.l1_weight) + result.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    optimizer.step()
    usage += torch.bincount(result.codes.flatten(), minlength=config.codebook_size).double()
    if (step + 1) % tcfg.restart_every == 0 and step + 1 < tcfg.steps:
        model.quantize.restart(usage <= tcfg.restart_min_usage, result.latents, gen)
        usage.zero_()
    return float(loss.detach())
