"""HF decoder backbones (Llama, Gemma, Qwen2) made bidirectional.

The backbone is any ``AutoModelForCausalLM``-compatible decoder whose layers have ``input_layernorm``,
``self_attn``, ``post_attention_layernorm`` and ``mlp``. It is built from a preset (random weights) or loaded from
a local pretrained folder, optionally truncated to its first ``keep_layers`` layers.

The causal mask is removed by passing an explicit 4D mask ``[B, 1, L, L]`` that hides padding keys only;
transformers uses an explicit 4D mask as given for every attention implementation, while ``is_causal=False`` on
the modules alone leaves eager attention causal. ``attn_implementation: sdpa`` runs
:func:`medim.model.attention.bidirectional_attention` (bidirectional by construction: no mask at all when nothing
is padded); ``eager`` is transformers' own, with the additive mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GemmaConfig,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
)

from medim.config import ConfigError, ModelConfig
from medim.model.attention import hf_attn_implementation

CONFIG_CLASSES = {"llama": LlamaConfig, "gemma": GemmaConfig, "qwen2": Qwen2Config}


def _preset_config(cfg: ModelConfig, vocab_size: int) -> LlamaConfig | GemmaConfig | Qwen2Config:
    cls = CONFIG_CLASSES[cfg.family]
    return cls(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=max(cfg.seq_len, 128),
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        use_cache=False,
    )


def build_backbone(cfg: ModelConfig, vocab_size: int) -> PreTrainedModel:
    """A causal-LM backbone with ``vocab_size`` text rows.

    With ``cfg.pretrained_path`` the weights come from that local folder (never the network) and
    ``vocab_size`` is ignored: the backbone keeps its own vocabulary. Otherwise a randomly initialised model of
    the preset's shape is built.
    """
    if cfg.pretrained_path:
        path = Path(cfg.pretrained_path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.pretrained_path={str(path)!r}: no config.json there (a local HF model folder)"
            )
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
        family = hf_config.model_type
        if family not in CONFIG_CLASSES:
            raise ConfigError(
                f"{path}/config.json: model_type {family!r} is not one of {sorted(CONFIG_CLASSES)}"
            )
        if family != cfg.family:
            raise ConfigError(f"model.family={cfg.family!r} but {path}/config.json says {family!r}")
        model = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            attn_implementation=hf_attn_implementation(cfg.attn_implementation),
            dtype=torch.float32,
        )
        if cfg.keep_layers is not None:
            truncate_layers(model, cfg.keep_layers)
    else:
        hf_config = _preset_config(cfg, vocab_size)
        model = AutoModelForCausalLM.from_config(
            hf_config, attn_implementation=hf_attn_implementation(cfg.attn_implementation)
        )
    model.config.use_cache = False
    return model


def truncate_layers(model: PreTrainedModel, keep: int) -> None:
    """Keep only the first ``keep`` decoder layers (the paper keeps 10 of Liquid's 28)."""
    layers = decoder_layers(model)
    if keep > len(layers):
        raise ConfigError(f"model.keep_layers={keep} is invalid: the backbone has only {len(layers)} layers")
    model.model.layers = nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep]


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The backbone's decoder layers, checked to have the parts the time modulation hooks into."""
    layers = model.model.layers
    for part in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        if not hasattr(layers[0], part):
            raise ConfigError(f"{type(layers[0]).__name__} has no {part}: unsupported backbone layer")
    return layers


def bidirectional_mask(
    key_valid: torch.Tensor, *, additive_dtype: torch.dtype | None = None, causal: bool = False
) -> torch.Tensor:
    """Attention mask that hides padding keys only, for every query (``causal=True``: also future keys, for the
    causal-attention ablation only).

    Args:
        key_valid: BoolTensor [B, L], True where the token may be attended to.
        additive_dtype: None for a boolean mask (sdpa), or the score dtype for an additive mask (eager), where
            visible keys get 0 and padding keys the dtype's minimum.
    Returns:
        Tensor [B, 1, L, L].
    """
    batch, length = key_valid.shape
    visible = key_valid[:, None, None, :].expand(batch, 1, length, length)
    if causal:
        visible = visible & torch.ones(length, length, dtype=torch.bool, device=key_valid.device).tril()
    if additive_dtype is None:
        return visible
    blocked = torch.zeros(visible.shape, dtype=additive_dtype, device=key_valid.device)
    return blocked.masked_fill(~visible, torch.finfo(additive_dtype).min)
