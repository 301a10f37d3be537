"""Typed, self-validating configuration for medim.

Every group of the Hydra tree (``configs/``) has a dataclass here. Each dataclass checks its own values in
``__post_init__`` and raises :class:`ConfigError` naming the setting, the bad value and what is allowed.
Presets are YAML files under ``configs/<group>/<name>.yaml``; :func:`load_preset` merges one onto the
dataclass defaults (through OmegaConf structured configs, so unknown keys and wrong types are rejected too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

FAMILIES = ("llama", "gemma", "qwen2")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
ADALN_KINDS = ("per_layer", "single")
ATTENTION_KINDS = ("bidirectional", "causal")
TIME_INPUTS = ("adaln", "none")
DTYPES = ("float32", "bfloat16")
SITE_TRAINABLE = ("lora", "time", "adaln", "adaln_offsets", "new_token_rows")


class ConfigError(ValueError):
    """A configuration value is out of its allowed range; the message names the setting."""


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


def check_positive(name: str, value: int | float) -> None:
    check(value > 0, name, value, "> 0")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, name, value, "one of " + ", ".join(choices))


def check_unit(name: str, value: float, *, open_low: bool = False, open_high: bool = False) -> None:
    lo_ok = value > 0 if open_low else value >= 0
    hi_ok = value < 1 if open_high else value <= 1
    allowed = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
    check(lo_ok and hi_ok, name, value, allowed)


@dataclass
class LoraConfig:
    """LoRA adapters on the backbone's attention and MLP projections (PEFT)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "[0, 1)")
        check(len(self.target_modules) > 0, "lora.target_modules", self.target_modules, "a non-empty list")


@dataclass
class ModelConfig:
    """The MeDiM network: backbone shape (or a local pretrained path), vocabulary and time conditioning.

    ``attention: causal`` and ``time_input: none`` exist for the paper's ablations only (MeDiM is bidirectional
    with AdaLN time conditioning).

    ``site_trains`` names what LoRA training (a site) trains besides the frozen base, and so what it uploads:
    ``lora`` (required), ``time`` (time MLP), ``adaln`` (the whole modulation) or ``adaln_offsets`` (only its
    time-independent per-layer offsets: the biases of ``per_layer``, the offset table of ``single``),
    ``new_token_rows`` (the added rows; only with ``train_new_token_rows``).

    ``tokenizer`` names the image tokenizer preset (``configs/tokenizer/``) whose codes this model reads; its
    ``image_tokens`` and ``codebook_size`` must equal the model's.

    Sequence layout (fixed length ``seq_len = image_tokens + text_tokens + 2``)::

        <boi> c_1 .. c_N <eoi> w_1 .. w_k <eos> <pad> .. <pad>
        |--- image region ---|  |------ text region (text_tokens) ------|
    """

    family: str = "llama"
    pretrained_path: str | None = None
    keep_layers: int | None = None
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 704
    rope_theta: float = 10000.0
    attn_implementation: str = "sdpa"
    attention: str = "bidirectional"
    time_input: str = "adaln"
    adaln: str = "per_layer"
    time_embed_dim: int = 256
    dtype: str = "float32"
    codebook_size: int = 1024
    image_tokens: int = 64
    text_tokens: int = 64
    tokenizer: str = "small-f8"
    train_new_token_rows: bool = True
    site_trains: list[str] = field(default_factory=lambda: ["lora", "time", "adaln", "new_token_rows"])
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**self.lora)
        check_choice("model.family", self.family, FAMILIES)
        check_choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_choice("model.adaln", self.adaln, ADALN_KINDS)
        check_choice("model.attention", self.attention, ATTENTION_KINDS)
        check_choice("model.time_input", self.time_input, TIME_INPUTS)
        check_choice("model.dtype", self.dtype, DTYPES)
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "time_embed_dim",
            "codebook_size",
            "image_tokens",
            "text_tokens",
        ):
            check_positive(f"model.{name}", getattr(self, name))
        check(self.time_embed_dim % 2 == 0, "model.time_embed_dim", self.time_embed_dim, "an even number")
        trains = list(self.site_trains)
        allowed = "a list of distinct " + ", ".join(SITE_TRAINABLE) + " holding lora"
        check(
            "lora" in trains and len(set(trains)) == len(trains) and set(trains) <= set(SITE_TRAINABLE),
            "model.site_trains",
            trains,
            allowed,
        )
        check(
            not {"adaln", "adaln_offsets"} <= set(trains),
            "model.site_trains",
            trains,
            "adaln (the whole modulation) or adaln_offsets (its per-layer offsets), not both",
        )
        if self.pretrained_path is None:
            check(
                self.hidden_size % self.num_heads == 0,
                "model.hidden_size",
                self.hidden_size,
                f"a multiple of model.num_heads={self.num_heads}",
            )
            check(
                self.num_heads % self.num_kv_heads == 0,
                "model.num_kv_heads",
                self.num_kv_heads,
                f"a divisor of model.num_heads={self.num_heads}",
            )
        if self.keep_layers is not None:
            check_positive("model.keep_layers", self.keep_layers)

    @property
    def seq_len(self) -> int:
        return self.image_tokens + self.text_tokens + 2


@dataclass
class DiffusionConfig:
    """Absorbing-state diffusion with the log-linear schedule and an explicit task mix.

    Task ratios (normalised to sum 1): ``joint`` masks both regions at rate (1-eps)t; ``text_to_image`` keeps
    the report clean and masks the image; ``image_to_text`` keeps the image clean and masks the report;
    ``prompt`` keeps a report prefix of ``prompt_tokens`` clean and masks the rest of both regions.
    ``cond_drop`` replaces the clean condition of a conditional task by [MASK] (trains the CFG branch).
    """

    eps: float = 1e-3
    t_min: float = 1e-3
    joint: float = 0.4
    text_to_image: float = 0.25
    image_to_text: float = 0.25
    prompt: float = 0.1
    cond_drop: float = 0.1
    prompt_tokens: int = 8

    def __post_init__(self) -> None:
        check_unit("diffusion.eps", self.eps, open_low=True, open_high=True)
        check_unit("diffusion.t_min", self.t_min, open_low=True, open_high=True)
        for name in ("joint", "text_to_image", "image_to_text", "prompt"):
            check(getattr(self, name) >= 0, f"diffusion.{name}", getattr(self, name), ">= 0")
        total = self.joint + self.text_to_image + self.image_to_text + self.prompt
        check(total > 0, "diffusion task ratios", total, "a positive sum")
        check_unit("diffusion.cond_drop", self.cond_drop, open_high=True)
        check_positive("diffusion.prompt_tokens", self.prompt_tokens)

    @property
    def task_probs(self) -> list[float]:
        """Probabilities of (joint, text_to_image, image_to_text, prompt)."""
        raw = [self.joint, self.text_to_image, self.image_to_text, self.prompt]
        total = sum(raw)
        return [r / total for r in raw]


@dataclass
class SamplerConfig:
    """MaskGIT sampling: arccos commit schedule, Gumbel confidence, classifier-free guidance w*(1-t).

    ``autocast_bf16``: run the backbone under bf16 autocast (as training does); the output heads, the guidance
    mix, the candidate draws and the confidences stay fp32.
    """

    steps: int = 16
    cfg: float = 5.0
    temperature: float = 1.0
    confidence_noise: float = 10.0
    autocast_bf16: bool = True

    def __post_init__(self) -> None:
        check_positive("sampler.steps", self.steps)
        check(self.cfg >= 0, "sampler.cfg", self.cfg, ">= 0")
        check_positive("sampler.temperature", self.temperature)
        check(self.confidence_noise >= 0, "sampler.confidence_noise", self.confidence_noise, ">= 0")


@dataclass
class TrainConfig:
    """The local training loop shared by the centralised baseline and (later) the sites."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0
    autocast_bf16: bool = True
    log_every: int = 10
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        check_positive("train.steps", self.steps)
        check_positive("train.batch_size", self.batch_size)
        check_positive("train.lr", self.lr)
        check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")
        check_positive("train.grad_clip", self.grad_clip)
        check(self.threads >= 0, "train.threads", self.threads, ">= 0 (0 = all cores)")
        check_positive("train.log_every", self.log_every)
        check(self.max_minutes >= 0, "train.max_minutes", self.max_minutes, ">= 0 (0 = no limit)")


def config_dir() -> Path:
    """The Hydra config tree: ``$MEDIM_CONFIG_DIR`` or ``configs/`` at the repository root."""
    env = os.environ.get("MEDIM_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not path.is_dir():
        raise ConfigError(f"config directory {path} does not exist (set MEDIM_CONFIG_DIR)")
    return path


def presets(group: str) -> list[str]:
    """Names of the presets available in a config group, e.g. ``presets("model")``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def build_config(cls: type[T], values: dict[str, Any] | None = None, *, where: str = "") -> T:
    """Make ``cls`` from a plain mapping through an OmegaConf structured merge.

    Unknown keys and wrong types raise :class:`ConfigError` naming ``where``; value ranges are then checked
    by the dataclass itself.
    """
    base = OmegaConf.structured(cls)
    OmegaConf.set_struct(base, True)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(values or {}))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where or cls.__name__}: {err.msg if hasattr(err, 'msg') else err}") from None
    assert isinstance(obj, cls)
    return obj


def load_preset(cls: type[T], group: str, name: str, **overrides: Any) -> T:
    """Load ``configs/<group>/<name>.yaml`` into ``cls``, apply keyword overrides, validate."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group} preset {name!r} not found in {path.parent}: available {presets(group)}")
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(loaded, dict)
    raw: dict[str, Any] = {str(k): v for k, v in loaded.items()}
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown {group} setting(s) {unknown}: allowed {sorted(known)}")
    raw.update(overrides)
    return build_config(cls, raw, where=str(path))


@dataclass
class RootConfig:
    """The composed Hydra config of a run: one entry per group of ``configs/config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def register_configs() -> None:
    """Register :class:`RootConfig` with Hydra's ConfigStore as ``medim_schema`` (the base of config.yaml)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="medim_schema", node=RootConfig)


def compose(overrides: list[str] | None = None) -> RootConfig:
    """Compose ``configs/config.yaml`` with Hydra command-line style overrides, e.g.
    ``["model=tiny", "train.steps=10"]``, and validate the result."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except HydraException as err:
        raise ConfigError(f"config overrides {overrides}: {err}") from None
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return build_config(RootConfig, {str(k): v for k, v in raw.items()}, where="composed config")
