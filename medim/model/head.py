"""The output head of the ids MeDiM adds, able to run only at scored rows with exact per-sample gradients.

:class:`ScoredHead` is an ``nn.Linear`` (no bias, state-dict key ``weight``) whose weight rows fall into fixed
*groups* (MeDiM: the image-code rows, the ``<eos>``/``<pad>`` rows). Called on ``h`` [..., H] it is the plain
Linear. :meth:`ScoredHead.scored` instead takes, per group, the hidden states of only the rows scored against
that group, gathered across the batch, and computes only those columns; one module call covers every group,
so Opacus' hooks see it once per forward. The grad sampler registered here turns that call's flat rows back
into per-sample gradients [B, out, H] from the rows' per-sample counts, in Opacus' ``hooks`` and ``ghost``
modes; ``functorch`` (which vmaps one batch-shaped input) needs the batch-shaped call
(:func:`functorch_attached`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn


class ScoredHead(nn.Linear):
    """``nn.Linear(hidden, out, bias=False)`` with row groups ``groups`` (slices of its output rows)."""

    def __init__(self, hidden: int, out: int, groups: tuple[slice, ...]) -> None:
        super().__init__(hidden, out, bias=False)
        self.groups = groups

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(h,)``: logits [..., out] of h [..., H]. ``(*xs, counts)``: one x [M_g, H] per group and counts
        LongTensor [B, n_groups] (rows of each sample, rows grouped by sample in batch order) -> the packed
        logits of each group at its rows, flattened and concatenated: [sum_g M_g * |group g|]."""
        if len(inputs) == 1:
            return F.linear(inputs[0], self.weight)
        *xs, _counts = inputs
        if len(xs) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} row sets and counts, got {len(inputs)} inputs")
        return torch.cat(
            [F.linear(x, self.weight[g]).flatten() for x, g in zip(xs, self.groups, strict=True)]
        )

    def widths(self) -> list[int]:
        """Number of output rows in each group."""
        return [len(range(self.out_features)[g]) for g in self.groups]

    def scored(self, xs: list[torch.Tensor], counts: torch.Tensor) -> list[torch.Tensor]:
        """Logits [M_g, |group g|] of each group g at its rows ``xs[g]`` [M_g, H].

        Args:
            xs: per group, the hidden states of the rows scored against it, gathered row-major from a [B, n]
                batch (all of sample 0's rows, then sample 1's, ...).
            counts: LongTensor [B, n_groups], rows of each sample in each group (``counts[:, g].sum() == M_g``);
                it carries the rows' owners to the per-sample gradients, and, as the call's last input, the
                batch size B that Opacus reads from it.
        """
        packed = self(*xs, counts)
        sizes = [x.shape[0] * w for x, w in zip(xs, self.widths(), strict=True)]
        return [
            part.view(x.shape[0], w)
            for part, x, w in zip(packed.split(sizes), xs, self.widths(), strict=True)
        ]


def functorch_attached(head: ScoredHead) -> bool:
    """True while Opacus computes ``head``'s per-sample gradients with functorch (it prepares that attribute)."""
    return hasattr(head, "ft_compute_sample_grad")


@register_grad_sampler(ScoredHead)
def _scored_head_grad_sample(
    head: ScoredHead, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradients {weight: [B, out, H]} of one call, from its inputs and the gradient of its output.

    A batch-shaped call is a Linear's. For a scored call, sample b's gradient in group g is the sum of its rows'
    outer products, ``backprops_g[rows of b]^T @ x_g[rows of b]`` ([|g|, H]); rows outside every group are 0.
    ``backprops`` already carries Opacus' batch-size factor of the mean loss. Returned in the weight's dtype, so
    :meth:`medim.privacy_sgd.DPSession.backward` has no cast to make.
    """
    if len(activations) == 1:
        return compute_linear_grad_sample(head, activations, backprops)
    *xs, counts = activations
    # [B, out, H] in the weight's dtype: products in the backprops' dtype (bf16 under autocast), stored exactly
    grad = torch.zeros(counts.shape[0], *head.weight.shape, dtype=head.weight.dtype, device=backprops.device)
    sizes = [x.shape[0] * w for x, w in zip(xs, head.widths(), strict=True)]
    parts = backprops.split(sizes)
    for g, (rows, x, part, width) in enumerate(zip(head.groups, xs, parts, head.widths(), strict=True)):
        per_row = part.view(x.shape[0], width)  # [M_g, |g|]
        owned = counts[:, g].tolist()
        for b, (back, x_b) in enumerate(
            zip(per_row.split(owned), x.to(per_row.dtype).split(owned), strict=True)
        ):
            grad[b, rows] = back.T @ x_b
    return {head.weight: grad}
