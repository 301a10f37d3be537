"""The MeDiM network: a bidirectional HF decoder with time AdaLN, an extended vocabulary and region-restricted logits.

``MeDiM(x_t, sigma)`` maps a partially masked sequence ``x_t`` [B, L] and the noise level ``sigma`` [B] to
logits [B, L, V] over the whole id space of :class:`medim.tokenize.vocab.Vocab`, with ``-inf`` wherever the
position's region may not emit the id (text positions never emit image codes and vice versa; [MASK] never).

The backbone keeps its own text rows (embedding and head); the ids MeDiM adds (specials, [MASK], image codes)
live in ``new_embed`` / ``new_head``, so a pretrained backbone's rows stay untouched and only the new rows need
to train (and to travel, in federated rounds).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from medim.config import ModelConfig
from medim.model.backbone import bidirectional_mask, decoder_layers
from medim.model.time import TimeEmbedding, make_adaln
from medim.tokenize.vocab import Vocab


class MeDiM(nn.Module):
    """Bidirectional masked-diffusion denoiser over one text + image token space."""

    def __init__(self, cfg: ModelConfig, vocab: Vocab, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.backbone = backbone
        base_embed = backbone.get_input_embeddings()
        base_head = backbone.get_output_embeddings()
        assert isinstance(base_embed, nn.Embedding) and isinstance(base_head, nn.Linear)
        if base_embed.num_embeddings != vocab.text_size:
            raise ValueError(
                f"backbone has {base_embed.num_embeddings} text rows but the vocabulary expects {vocab.text_size}"
            )
        hidden = backbone.config.hidden_size
        n_new = vocab.size - vocab.text_size
        self.new_embed = nn.Embedding(n_new, hidden)
        self.new_head = nn.Linear(hidden, n_new, bias=False)
        with torch.no_grad():
            self.new_embed.weight.normal_(0.0, float(base_embed.weight.std()))
            self.new_head.weight.normal_(0.0, float(base_head.weight.std()))
        layers = decoder_layers(backbone)
        self.allowed: torch.Tensor
        self.register_buffer("allowed", vocab.allowed_outputs(), persistent=False)
        self._mod: torch.Tensor | None = None
        self.time: TimeEmbedding | None = None
        self.adaln: nn.Module | None = None
        if cfg.time_input == "none":  # ablation: no time input at all
            return
        self.time = TimeEmbedding(cfg.time_embed_dim, hidden)
        self.adaln = make_adaln(cfg.adaln, hidden, len(layers))
        for i, layer in enumerate(layers):
            hooks = {
                "input_layernorm": (self._modulate_norm, 0),
                "self_attn": (self._gate_branch, 2),
                "post_attention_layernorm": (self._modulate_norm, 3),
                "mlp": (self._gate_branch, 5),
            }
            for part, (hook, slot) in hooks.items():
                submodule = layer.get_submodule(part)
                submodule.register_forward_hook(partial(hook, i, slot))

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.backbone))

    def _layer_mod(self, layer: int, slot: int) -> torch.Tensor:
        if self._mod is None:
            raise RuntimeError("backbone layers were called outside MeDiM.forward (no time modulation set)")
        return self._mod[:, layer, slot][:, None, :]

    def _modulate_norm(
        self, layer: int, slot: int, _module: nn.Module, _inputs: Any, out: torch.Tensor
    ) -> torch.Tensor:
        shift, scale = self._layer_mod(layer, slot), self._layer_mod(layer, slot + 1)
        return out * (1 + scale) + shift

    def _gate_branch(self, layer: int, slot: int, _module: nn.Module, _inputs: Any, out: Any) -> Any:
        gate = 1 + self._layer_mod(layer, slot)
        if isinstance(out, tuple):
            return (out[0] * gate, *out[1:])
        return out * gate

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """LongTensor [B, L] -> FloatTensor [B, L, H]; backbone rows for text ids, new rows for the rest."""
        n_text = self.vocab.text_size
        is_new = (ids >= n_text)[..., None]
        base = self.backbone.get_input_embeddings()(ids.clamp(max=n_text - 1))
        new = self.new_embed((ids - n_text).clamp(min=0))
        return torch.where(is_new, new, base)

    def hidden_states(
        self, xt: torch.Tensor, sigma: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-layer hidden states [B, L, H] of the time-modulated bidirectional backbone."""
        if xt.dim() != 2 or xt.shape[1] != self.vocab.seq_len:
            raise ValueError(f"x_t has shape {tuple(xt.shape)}, expected [B, {self.vocab.seq_len}]")
        if sigma.shape != (xt.shape[0],):
            raise ValueError(f"sigma has shape {tuple(sigma.shape)}, expected [{xt.shape[0]}]")
        if key_valid is None:
            key_valid = torch.ones_like(xt, dtype=torch.bool)
        eager = self.backbone.config._attn_implementation == "eager"
        mask = bidirectional_mask(
            key_valid, additive_dtype=torch.float32 if eager else None, causal=self.cfg.attention == "causal"
        )
        if self.time is not None and self.adaln is not None:
            self._mod = self.adaln(self.time(sigma))
        try:
            out = self.backbone.model(inputs_embeds=self.embed(xt), attention_mask=mask, use_cache=False)
        finally:
            self._mod = None
        return out.last_hidden_state

    def forward(
        self, xt: torch.Tensor, sigma: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, L, V] for x_t [B, L] (LongTensor) at noise level sigma [B]; ``key_valid`` [B, L] optional."""
        h = self.hidden_states(xt, sigma, key_valid)
        logits = torch.cat([self.backbone.get_output_embeddings()(h), self.new_head(h)], dim=-1)
        return logits.float().masked_fill(~self.allowed, float("-inf"))
