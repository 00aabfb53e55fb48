"""Attention pooling of a graph's edge (or node) states into one vector per graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .scatter import scatter


class AttentionPool(nn.Module):
    r"""``heads`` learned soft selections of rows, each a weighted mean of projected states:

    .. math::
        a_{k,i} = \operatorname{softmax}_{i \in \text{graph}}\big(q_k^\top x_i\big), \qquad
        o_k = \textstyle\sum_i a_{k,i}\, V_k x_i

    Invariant to any permutation of the rows within a graph (a weighted mean). A plain mean
    mixes every layer's edges in proportion to their count; a head can instead attend to one
    layer or one range of values, as the per-tensor statistics of StatNN do.
    """

    def __init__(self, hidden: int, heads: int = 4):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.heads = heads
        self.score = nn.Linear(hidden, heads, bias=False)  # a bias cancels in the softmax: it would learn noise
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, index: Tensor, size: int) -> Tensor:
        score = self.score(x)
        score = score.to(torch.promote_types(score.dtype, torch.float32))  # float32 under autocast, float64 kept
        score = score - scatter(score, index, size, "max").index_select(0, index)  # stable softmax per graph
        weight = score.exp()
        weight = weight / scatter(weight, index, size, "sum").index_select(0, index).clamp_min(1e-30)
        value = self.value(x).view(x.size(0), self.heads, -1) * weight.unsqueeze(-1).to(x.dtype)
        return scatter(value.flatten(1), index, size, "sum")
