"""Typed, self-validating configuration of the VQ image tokenizer.

The network follows taming-transformers' VQGAN (``Encoder``/``Decoder`` of ResnetBlocks with GroupNorm, one
attention block in the middle, ``ch * ch_mult[i]`` channels per level, ``len(ch_mult) - 1`` stride-2 steps),
so the same module runs our small CPU tokenizer and the paper's Chameleon VQGAN. Presets live in
``configs/tokenizer/<name>.yaml`` and load with ``medim.config.load_preset(TokenizerConfig, "tokenizer", name)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medim.config import check


@dataclass
class TokenizerTrainConfig:
    """How ``medim-tokenizer train`` optimises the tokenizer (AdamW on MSE + L1 + codebook losses)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 0.5
    seed: int = 0
    threads: int = 0
    autocast_bf16: bool = False
    restart_every: int = 50
    restart_min_usage: float = 0.0
    checkpoint_every: int = 250
    log_every: int = 25
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "restart_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"tokenizer.train.{name}", value, "an integer > 0")
        check(self.lr > 0, "tokenizer.train.lr", self.lr, "> 0")
        check(self.warmup_steps >= 0, "tokenizer.train.warmup_steps", self.warmup_steps, ">= 0")
        check(self.weight_decay >= 0, "tokenizer.train.weight_decay", self.weight_decay, ">= 0")
        check(self.grad_clip > 0, "tokenizer.train.grad_clip", self.grad_clip, "> 0")
        check(self.l1_weight >= 0, "tokenizer.train.l1_weight", self.l1_weight, ">= 0")
        check(self.threads >= 0, "tokenizer.train.threads", self.threads, ">= 0 (0 = all cores)")
        check(
            self.restart_min_usage >= 0,
            "tokenizer.train.restart_min_usage",
            self.restart_min_usage,
            ">= 0 (codes used at most this many times per restart window are restarted)",
        )
        check(self.max_minutes >= 0, "tokenizer.train.max_minutes", self.max_minutes, ">= 0 (0 = no limit)")


@dataclass
class TokenizerConfig:
    """A VQGAN-family image tokenizer: ``resolution``^2 images -> ``grid``^2 codes from ``codebook_size``.

    ``embed_dim`` is the dimension of the codebook lookup. With ``l2_normalize`` the lookup is cosine
    (encoder output and codebook vectors are unit-normalised before the nearest-neighbour search): together
    with a small ``embed_dim`` this is the factorised code of ViT-VQGAN, which keeps a codebook in use.
    ``norm_groups`` is 32 in taming/Chameleon checkpoints; smaller models may use fewer groups.
    """

    resolution: int = 64
    in_channels: int = 3
    ch: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    z_channels: int = 64
    embed_dim: int = 16
    codebook_size: int = 1024
    l2_normalize: bool = True
    beta: float = 0.25
    norm_groups: int = 32
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TokenizerTrainConfig(**self.train)
        for name in ("resolution", "ch", "z_channels", "embed_dim", "norm_groups", "num_res_blocks"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"tokenizer.{name}", value, "an integer > 0")
        check(self.in_channels in (1, 3), "tokenizer.in_channels", self.in_channels, "1 or 3")
        check(self.codebook_size >= 2, "tokenizer.codebook_size", self.codebook_size, ">= 2")
        check(
            len(self.ch_mult) > 0 and all(m > 0 for m in self.ch_mult),
            "tokenizer.ch_mult",
            self.ch_mult,
            "a non-empty list of positive integers",
        )
        check(
            self.resolution % self.downsample == 0,
            "tokenizer.resolution",
            self.resolution,
            f"a multiple of the downsampling factor 2**(len(ch_mult)-1)={self.downsample}",
        )
        for mult in [1, *self.ch_mult]:
            check(
                (self.ch * mult) % self.norm_groups == 0,
                "tokenizer.norm_groups",
                self.norm_groups,
                f"a divisor of every level's channel count (ch * ch_mult = {self.ch} * {mult})",
            )
        check(0 <= self.dropout < 1, "tokenizer.dropout", self.dropout, "[0, 1)")
        check(self.beta >= 0, "tokenizer.beta", self.beta, ">= 0")

    @property
    def downsample(self) -> int:
        """Spatial downsampling factor f: ``resolution / grid``."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        """Codes per side: ``resolution // downsample``."""
        return self.resolution // self.downsample

    @property
    def image_tokens(self) -> int:
        """Codes per image (``grid ** 2``); must equal ``ModelConfig.image_tokens``."""
        return self.grid**2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (nested ``train`` included)."""
        return asdict(self)

    def architecture(self) -> dict[str, Any]:
        """The settings that fix the network's weights (everything except ``train``)."""
        arch = self.to_dict()
        arch.pop("train")
        return arch
