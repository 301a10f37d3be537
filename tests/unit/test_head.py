"""ScoredHead (medim/model/head.py): scored-row logits and exact per-sample gradients under Opacus' hooks."""

import pytest
import torch
from opacus.grad_sample.utils import prepare_module
from torch import nn

from medim.model.head import ScoredHead

torch.set_num_threads(1)
GROUPS = (slice(3, None), slice(1, 3))
COUNTS = torch.tensor([[3, 1], [0, 2], [5, 0], [1, 1]])  # [B, groups]: unequal, with empty samples


class _Net(nn.Module):
    """A trainable layer before the head, so the head's inputs require gradients as in MeDiM."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(6, 6)
        self.head = ScoredHead(6, 11, GROUPS)

    def forward(self, xs: list[torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        """Per-sample losses [B]: sum over each sample's rows of the logsumexp of its group's logits."""
        pre = self.pre(torch.cat(xs)).split([x.shape[0] for x in xs])  # one call: ghost forbids reuse
        logits = self.head.scored(list(pre), counts)
        losses = torch.zeros(counts.shape[0])
        for g, part in enumerate(logits):
            owner = torch.repeat_interleave(torch.arange(counts.shape[0]), counts[:, g])
            losses = losses.index_add(0, owner, part.logsumexp(-1))
        return losses


def _rows(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(COUNTS[:, i].sum()), 6, generator=g) for i in range(len(GROUPS))]


def test_scored_logits_are_the_linear_columns_of_each_group():
    head = ScoredHead(6, 11, GROUPS)
    xs = _rows(0)
    for got, x, rows in zip(head.scored(xs, COUNTS), xs, GROUPS, strict=True):
        torch.testing.assert_close(got, head(x)[:, rows])


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_scored_head_per_sample_gradients_equal_one_sample_at_a_time(mode):
    torch.manual_seed(0)
    net = _Net().train()
    xs = _rows(1)
    reference = []
    for b in range(COUNTS.shape[0]):
        start = COUNTS[:b].sum(0)
        sub = [x[int(start[g]) : int(start[g] + COUNTS[b, g])] for g, x in enumerate(xs)]
        net.zero_grad(set_to_none=True)
        net(sub, COUNTS[b : b + 1]).sum().backward()
        reference.append(net.head.weight.grad.clone())
    net.zero_grad(set_to_none=True)
    hooks = prepare_module(
        net, grad_sample_mode=mode, wrap_model=False, batch_first=True, loss_reduction="mean"
    )
    try:
        net(xs, COUNTS).mean().backward()
        weight = net.head.weight
        if mode == "ghost":  # per-sample norms only
            want = torch.stack([r.norm() for r in reference])
            torch.testing.assert_close(weight._norm_sample, want, rtol=1e-5, atol=1e-7)
        else:
            torch.testing.assert_close(weight.grad_sample, torch.stack(reference), rtol=1e-5, atol=1e-7)
    finally:
        hooks.cleanup()
