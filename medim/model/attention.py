"""The backbone's attention for ``model.attn_implementation: sdpa``: bidirectional, keys hidden only by an explicit
mask, registered with transformers under :data:`ATTENTION`.

transformers passes a 4D mask through unchanged and, for an implementation without a registered mask builder,
passes ``None`` as ``None``; so :class:`medim.model.medim.MeDiM` hands no mask at all when nothing is padded and
the model is bidirectional, and the attention skips the mask work (on CPU, building the additive mask and checking
it for fully masked rows cost about 6% of a forward).

On CPU the attention is two batched matmuls around an fp32 softmax: under bf16 autocast both matmuls run in bf16,
where PyTorch's SDPA math kernel upcasts bf16 to fp32 and its CPU flash kernel is slower at our lengths
(L = 146: about half the time of either per layer, forward + backward, one thread). Elsewhere it is SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

ATTENTION = "medim_bidirectional"


def bidirectional_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Softmax attention where every query sees every key the mask allows.

    Args:
        query: [B, n_heads, L, D]; key, value: [B, n_kv_heads, L, D] (grouped-query heads are repeated).
        attention_mask: None (every key visible) or BoolTensor [B, 1, L, L], True where visible.
        scaling: score scale (default ``D ** -0.5``); dropout: attention-probability dropout while training.
    Returns:
        (output [B, L, n_heads, D], None): transformers' attention-function contract, no weights returned.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    dropout = dropout if module.training else 0.0
    if query.device.type != "cpu":
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scale
        )
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # [B, n_heads, L, L]
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1, dtype=torch.float32).to(value.dtype)
        if dropout > 0:
            probs = F.dropout(probs, p=dropout)
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def hf_attn_implementation(name: str) -> str:
    """The transformers ``attn_implementation`` for ``model.attn_implementation`` (``sdpa`` -> ours)."""
    return ATTENTION if name == "sdpa" else name


AttentionInterface.register(ATTENTION, bidirectional_attention)
