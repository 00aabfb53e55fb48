"""Pooling per parameter tensor: one state per weight matrix, kernel or bias, then per graph."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .scatter import scatter


def tensor_segments(g) -> tuple[Tensor, Tensor]:
    """``(segment of every edge, graph of every segment)`` for a graph or a batch: each
    parameter tensor's edges form one segment (``param_index.params``, in flat order), and
    every graph's remaining edges (tied and structural) one more."""
    indexes = g.param_index if isinstance(g.param_index, list) else [g.param_index]
    batch = getattr(g, "batch", None)
    src_graph = torch.zeros(g.edge_index.size(1), dtype=torch.long, device=g.edge_index.device) if batch is None \
        else batch[g.edge_index[0]]
    edges = torch.bincount(src_graph, minlength=len(indexes)).tolist()
    sizes, owner = [], []
    for i, (index, total) in enumerate(zip(indexes, edges)):
        counts = [math.prod(shape) for _, shape, _ in index.params]
        sizes += counts + [total - sum(counts)]
        owner += [i] * (len(counts) + 1)
    device = g.edge_index.device
    seg = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return seg, torch.tensor(owner, device=device)


class TensorPool(nn.Module):
    r"""Edge states averaged per parameter tensor, then a DeepSets readout over tensors:

    .. math::
        t_s = \operatorname{mean}_{e \in s} x_e, \qquad
        o = \big[\operatorname{mean}_{s \in G} \phi(t_s),\ \max_{s \in G} \phi(t_s)\big]

    A plain mean over a graph's edges weighs each tensor by its size, so a small layer (the
    classifier head, a bias) barely counts; here every tensor counts once, as each tensor's
    statistics do in StatNN. Neuron permutations never move an edge to another tensor, so
    the readout is invariant to them; it needs no fixed layout, so mixed zoos pool alike.
    Output width ``2 * hidden``.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())

    def forward(self, x: Tensor, g, size: int) -> Tensor:
        seg, owner = tensor_segments(g)
        states = self.phi(scatter(x, seg, owner.numel(), "mean"))
        return torch.cat([scatter(states, owner, size, "mean"), scatter(states, owner, size, "max")], -1)
