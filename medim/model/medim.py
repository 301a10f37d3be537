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
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from medim.config import ModelConfig
from medim.model.attention import ATTENTION
from medim.model.backbone import bidirectional_mask, decoder_layers
from medim.model.head import ScoredHead, functorch_attached
from medim.model.time import TimeEmbedding, make_adaln
from medim.tokenize.vocab import N_SPECIALS, Vocab


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
        self._eos_pad = slice(vocab.eos - vocab.text_size, vocab.pad - vocab.text_size + 1)
        self.new_head = ScoredHead(hidden, n_new, groups=(slice(N_SPECIALS, None), self._eos_pad))
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
        causal = self.cfg.attention == "causal"
        implementation = self.backbone.config._attn_implementation
        mask = None  # ours is bidirectional by construction: no mask when nothing is padded
        if key_valid is not None or causal or implementation != ATTENTION:
            valid = torch.ones_like(xt, dtype=torch.bool) if key_valid is None else key_valid
            additive = torch.float32 if implementation == "eager" else None
            mask = bidirectional_mask(valid, additive_dtype=additive, causal=causal)
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

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] of image positions -> logits [..., codebook_size] over the image codes only
        (column k is id ``vocab.image_offset + k``): the allowed columns of :meth:`forward` at image positions."""
        return F.linear(h, self.new_head.weight[N_SPECIALS:])

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] of text positions -> logits [..., text_size + 2] over the text ids, then
        ``<eos>``, ``<pad>`` (:meth:`text_region_ids`): the allowed columns of :meth:`forward` at text positions."""
        eos_pad = self.new_head.weight[self._eos_pad]
        return torch.cat([self.backbone.get_output_embeddings()(h), F.linear(h, eos_pad)], dim=-1)

    def text_region_ids(self) -> torch.Tensor:
        """LongTensor [text_size + 2]: the vocabulary id of each column of :meth:`text_logits`."""
        vocab = self.vocab
        return torch.cat([torch.arange(vocab.text_size), torch.tensor([vocab.eos, vocab.pad])])

    def per_sample_hooks_attached(self) -> bool:
        """True while Opacus' per-sample-gradient hooks are on this module (:func:`medim.privacy_sgd.privatize`)."""
        return hasattr(self, "autograd_grad_sample_hooks")

    def scored_nll(
        self,
        xt: torch.Tensor,
        sigma: torch.Tensor,
        x0: torch.Tensor,
        scored: torch.Tensor,
        *,
        flat: bool | None = None,
    ) -> torch.Tensor:
        """``-log p(x0)`` at the ``scored`` positions, without materialising logits [B, L, V].

        Equals ``-log_softmax(self(xt, sigma))`` gathered at ``x0`` (same region restriction): image positions use
        only the image-code rows of ``new_head``, text positions the backbone's text rows plus ``<eos>``/``<pad>``.

        Args:
            xt, x0: LongTensor [B, L]; sigma: FloatTensor [B]; scored: BoolTensor [B, L] (image/text positions).
            flat: run the heads only at scored positions, gathered across the batch (cheapest), or on
                [B, positions, H]. Default: ``new_head`` runs flat except under Opacus' functorch mode (its grad
                sampler, :mod:`medim.model.head`, takes flat rows with their per-sample counts); the text head runs
                flat unless Opacus' hooks are attached and it holds trainable tensors (LoRA), since per-sample
                gradient engines need it to see [B, positions, H] exactly once per forward.
        Returns:
            FloatTensor [B, L] (fp32), 0 where not scored.
        """
        hooks = self.per_sample_hooks_attached()
        text_head = self.backbone.get_output_embeddings()
        flat_text = flat if flat is not None else not (hooks and _trains(text_head))
        flat_new = flat if flat is not None else not functorch_attached(self.new_head)
        h = self.hidden_states(xt, sigma)
        vocab = self.vocab
        h_img, h_txt = h[:, vocab.image_slice], h[:, vocab.text_slice]  # [B, I, H], [B, T, H]
        s_img, s_txt = scored[:, vocab.image_slice], scored[:, vocab.text_slice]
        x_img = x0[:, vocab.image_slice][s_img] - vocab.image_offset  # [M_img]
        x_txt = x0[:, vocab.text_slice][s_txt]  # [M_txt]
        rows_txt = h_txt[s_txt]  # [M_txt, H]
        txt_logits = text_head(rows_txt) if flat_text else text_head(h_txt)[s_txt]  # [M_txt, text_size]
        if flat_new:
            counts = torch.stack([s_img.sum(1), s_txt.sum(1)], dim=1)  # [B, 2]: rows per sample per group
            img_logits, end_logits = self.new_head.scored([h_img[s_img], rows_txt], counts)
        else:
            new = self.new_head(h[:, 1:])  # [B, L-1, V_new]: one call covering both regions
            n_img = vocab.image_tokens
            img_logits = new[:, :n_img, N_SPECIALS:][s_img]  # [M_img, C]
            end_logits = new[:, n_img + 1 :, self._eos_pad][s_txt]  # [M_txt, 2]
        nll_img = _spread(_nll(img_logits, x_img), s_img)
        nll_txt = _spread(_text_nll(txt_logits, end_logits, x_txt, vocab), s_txt)
        edge = nll_img.new_zeros(h.shape[0], 1)
        return torch.cat([edge, nll_img, edge, nll_txt], dim=1)


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _spread(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """values [M] (one per True position of ``where`` [B, n], row-major) -> [B, n], 0 elsewhere."""
    return values.new_zeros(where.shape).masked_scatter(where, values)


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [..., C] at target [...] (LongTensor in [0, C)), fp32 [...]."""
    logits = logits.float()
    return logits.logsumexp(-1) - logits.gather(-1, target[..., None]).squeeze(-1)


def _text_nll(
    text_logits: torch.Tensor, eos_pad_logits: torch.Tensor, target: torch.Tensor, vocab: Vocab
) -> torch.Tensor:
    """Cross-entropy over text ids [..., text_size] + (<eos>, <pad>) [..., 2] at target ids [...], fp32 [...]."""
    text_logits, eos_pad_logits = text_logits.float(), eos_pad_logits.float()
    lse = torch.logaddexp(text_logits.logsumexp(-1), eos_pad_logits.logsumexp(-1))
    is_text = target < vocab.text_size
    pick_text = text_logits.gather(-1, target.clamp(max=vocab.text_size - 1)[..., None]).squeeze(-1)
    pick_end = eos_pad_logits.gather(-1, (target - vocab.eos).clamp(0, 1)[..., None]).squeeze(-1)
    return lse - torch.where(is_text, pick_text, pick_end)
