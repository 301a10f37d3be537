"""Build a MeDiM model from a preset or a config: text tokenizer, vocabulary, backbone, time modules, LoRA."""

from __future__ import annotations

from typing import Any

import torch

from medim.config import ModelConfig, load_preset
from medim.model.backbone import build_backbone
from medim.model.lora import apply_lora
from medim.model.medim import MeDiM
from medim.tokenize.text import TextTokenizer
from medim.tokenize.vocab import Vocab


def text_tokenizer(cfg: ModelConfig) -> TextTokenizer:
    """The backbone's own tokenizer for a pretrained path, else medim's shipped BPE."""
    if cfg.pretrained_path:
        from transformers import AutoConfig

        rows = AutoConfig.from_pretrained(cfg.pretrained_path, local_files_only=True).vocab_size
        return TextTokenizer.from_pretrained(cfg.pretrained_path, vocab_rows=rows)
    return TextTokenizer.builtin()


def build_from_config(cfg: ModelConfig, *, lora: bool = False, seed: int | None = None) -> MeDiM:
    """A MeDiM for ``cfg``; with ``lora=True`` the LoRA adapters are injected and the trainable set is set."""
    if seed is not None:
        torch.manual_seed(seed)
    if cfg.pretrained_path:
        backbone = build_backbone(cfg, vocab_size=0)
        text_size = int(backbone.config.vocab_size)
    else:
        text_size = text_tokenizer(cfg).size
        backbone = build_backbone(cfg, vocab_size=text_size)
    vocab = Vocab(text_size, cfg.codebook_size, cfg.image_tokens, cfg.text_tokens)
    model = MeDiM(cfg, vocab, backbone)
    return apply_lora(model) if lora else model


def build_model(
    preset: str = "small", *, lora: bool = False, seed: int | None = None, **overrides: Any
) -> MeDiM:
    """``medim.build_model("tiny", hidden_size=32)``: the model of a preset in ``configs/model/``.

    ``model(x_t, sigma)`` with x_t LongTensor [B, L] and sigma FloatTensor [B] returns logits [B, L, V].
    """
    return build_from_config(load_preset(ModelConfig, "model", preset, **overrides), lora=lora, seed=seed)
