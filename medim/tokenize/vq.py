"""The VQ image tokenizer: encoder -> quant_conv -> codebook -> post_quant_conv -> decoder.

One tokenizer serves both modalities (as Chameleon's does for MeDiM): it works on 3-channel images in [-1, 1];
a grayscale chest X-ray [B,1,H,W] is repeated to 3 channels on the way in, and :func:`to_modality` averages
a decoded image back to one channel. Both modalities therefore share one code space and one codebook.

A trained tokenizer is a folder with ``tokenizer.safetensors`` (weights) and ``tokenizer.json`` (config,
step, fingerprint); :func:`load_tokenizer` also accepts a folder holding a taming/Chameleon ``vqgan.ckpt`` +
``vqgan.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medim.config import build_config
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_modules import Decoder, Encoder
from medim.tokenize.vq_quantizer import VectorQuantizer

WEIGHTS_FILE = "tokenizer.safetensors"
META_FILE = "tokenizer.json"
FORMAT = "medim-vq-tokenizer/1"
MODALITIES = ("cxr", "pathology")


@dataclass
class VQOutput:
    """One training forward pass: ``reconstruction`` [B,C,H,W], ``codes`` [B,h,w], codebook ``loss``,
    encoder ``latents`` [B*h*w, D] (candidates for dead-code restarts)."""

    reconstruction: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    latents: torch.Tensor


class VQTokenizer(nn.Module):
    """VQGAN-style autoencoder with a discrete bottleneck of ``config.image_tokens`` codes per image."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        shared: dict[str, Any] = {
            "ch": config.ch,
            "ch_mult": list(config.ch_mult),
            "num_res_blocks": config.num_res_blocks,
            "attn_resolutions": list(config.attn_resolutions),
            "resolution": config.resolution,
            "z_channels": config.z_channels,
            "groups": config.norm_groups,
            "dropout": config.dropout,
        }
        self.encoder = Encoder(in_channels=config.in_channels, **shared)
        self.decoder = Decoder(out_ch=config.in_channels, **shared)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.quantize = VectorQuantizer(
            config.codebook_size, config.embed_dim, beta=config.beta, l2_normalize=config.l2_normalize
        )

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if images.dim() != 4 or images.shape[1] not in (1, cfg.in_channels):
            raise ValueError(
                f"images must be [B,{cfg.in_channels},H,W] (or [B,1,H,W] grayscale), got {tuple(images.shape)}"
            )
        if images.shape[-2:] != (cfg.resolution, cfg.resolution):
            raise ValueError(
                f"images must be {cfg.resolution}x{cfg.resolution} for this tokenizer, "
                f"got {tuple(images.shape[-2:])}"
            )
        if images.shape[1] != cfg.in_channels:
            images = images.expand(-1, cfg.in_channels, -1, -1)
        return images.to(self.quant_conv.weight.dtype)

    def forward(self, images: torch.Tensor) -> VQOutput:
        """Training pass on images [B,C,H,W] in [-1, 1] (C = in_channels, or 1 for grayscale)."""
        q = self.quantize(self.quant_conv(self.encoder(self._check_images(images))))
        recon = self.decoder(self.post_quant_conv(q.quantized.to(self.post_quant_conv.weight.dtype)))
        return VQOutput(reconstruction=recon, codes=q.codes, loss=q.loss, latents=q.latents)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,C,H,W] in [-1, 1] -> codes [B, grid*grid] int64 (row-major)."""
        z = self.quant_conv(self.encoder(self._check_images(images)))
        codes = self.quantize.nearest(self.quantize.prepare(z))
        return codes.reshape(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, grid*grid] (int, in [0, codebook_size)) -> images [B,in_channels,H,W] in [-1, 1] (float32)."""
        cfg = self.config
        if codes.dim() != 2 or codes.shape[1] != cfg.image_tokens:
            raise ValueError(f"codes must be [B,{cfg.image_tokens}], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {cfg.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        grid = codes.long().reshape(-1, cfg.grid, cfg.grid)
        quant = self.quantize.lookup(grid).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(quant)).float().clamp(-1, 1)

    def fingerprint(self) -> str:
        """12 hex digits identifying architecture + weights (names code caches: ``codes-<fingerprint>``)."""
        digest = hashlib.sha256(json.dumps(self.config.architecture(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:12]

    def save(self, folder: str | Path, *, step: int = 0, extra: dict[str, Any] | None = None) -> Path:
        """Write ``tokenizer.safetensors`` + ``tokenizer.json`` into ``folder`` (atomically); returns folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = out / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, out / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "step": step,
            "fingerprint": self.fingerprint(),
            "image_tokens": self.config.image_tokens,
            "codebook_size": self.config.codebook_size,
            **(extra or {}),
        }
        write_json(out / META_FILE, meta)
        return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``tokenizer.json`` of a tokenizer folder, checked for its format tag."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer metadata (expected {META_FILE} + {WEIGHTS_FILE})")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a medim tokenizer file (format {meta.get('format')!r}, expected {FORMAT})"
        )
    return meta


def load_tokenizer(folder: str | Path) -> VQTokenizer:
    """Load a tokenizer folder: ours (``tokenizer.json`` + ``tokenizer.safetensors``) or taming/Chameleon
    (``vqgan.ckpt`` + ``vqgan.yaml``). The module is returned in eval mode on CPU."""
    root = Path(folder)
    if not (root / META_FILE).is_file() and (root / "vqgan.ckpt").is_file():
        from medim.tokenize.taming import load_taming

        return load_taming(root / "vqgan.ckpt", root / "vqgan.yaml")
    meta = read_meta(root)
    config = build_config(TokenizerConfig, meta["config"], where=str(root / META_FILE))
    model = VQTokenizer(config)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: tokenizer weights missing")
    state = load_file(str(weights))
    load_state_checked(model, state, source=str(weights))
    return model.eval()


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` that names every missing/unexpected key and every shape mismatch."""
    own = model.state_dict()
    problems: list[str] = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for key in sorted(set(own) & set(state)):
        if tuple(own[key].shape) != tuple(state[key].shape):
            problems.append(
                f"shape mismatch for {key}: file {tuple(state[key].shape)}, model {tuple(own[key].shape)}"
            )
    if problems:
        raise ValueError(f"{source}: cannot load into the tokenizer: " + "; ".join(problems))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def to_modality(images: torch.Tensor, modality: str) -> torch.Tensor:
    """Decoded images [B,3,H,W] -> [B,1,H,W] (channel mean) for ``cxr``; unchanged for ``pathology``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r} is invalid: allowed one of {', '.join(MODALITIES)}")
    if modality == "cxr" and images.shape[1] != 1:
        return images.mean(dim=1, keepdim=True)
    return images
