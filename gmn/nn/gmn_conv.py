"""Edge-updating message passing in the sense of Graph Metanetworks (Lim et al., 2024)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .scatter import scatter


class GMNConv(nn.Module):
    r"""Node and edge states both updated; messages flow along and against edges.

    .. math::
        z_{uv} &= \mathrm{ReLU}\big(A h_u + B h_v + e_{uv}\big) \\
        e_{uv}' &= e_{uv} + W z_{uv} \\
        h_v' &= \mathrm{LN}\Big(h_v + \mathrm{MLP}\big([\,h_v,\ \operatorname{mean}_{u \to v} z_{uv},\
                 \operatorname{mean}_{v \to w} z_{vw}\,]\big)\Big)

    ``z`` is the hidden layer of the edge MLP on ``[h_u, h_v, e_uv]``; its first layer is
    linear in the concatenation, so ``A h`` and ``B h`` are computed once per node and
    gathered onto edges instead of running a ``3d -> d`` layer per edge. The same ``z``
    is the message in both directions (into ``v`` along the edge, into ``u`` against it);
    the linear maps a message would get commute with the mean and live in the node MLP.
    Per edge and layer this is one ``d x d`` product and one stored ``E x d`` activation.
    ``aggr`` is one reduction (``"mean"``, ``"sum"``, ``"max"``) or several joined by ``+``
    (``"mean+max"``), concatenated.

    ``film``: the edge state also scales the source's term,
    :math:`z_{uv} = \mathrm{ReLU}(A h_u \odot (1 + F e_{uv}) + B h_v + e_{uv})` (FiLM
    conditioning, as in Kofinas et al.'s neural-graph PNA). A layer of the model multiplies
    a neuron's activation by a weight; a sum of ``A h_u`` and ``e_uv`` can mimic that product
    only piecewise, a gate computes it in one layer.
    """

    def __init__(self, hidden: int, aggr: str = "mean", film: bool = False):
        super().__init__()
        self.hidden, self.aggrs = hidden, tuple(aggr.split("+"))
        self.node_proj = nn.Linear(hidden, 2 * hidden)  # A, B (and the edge MLP's bias)
        self.edge_film = nn.Linear(hidden, hidden) if film else None  # F
        self.edge_out = nn.Linear(hidden, hidden)  # W
        width = (1 + 2 * len(self.aggrs)) * hidden
        self.node_mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)

    def message(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """``z`` of the given edges (any subset: chunked passes call this per chunk)."""
        a, b = self.node_proj(h).chunk(2, dim=-1)
        # index_select, not a[src]: its backward is an index_add, not a sorting index_put. The
        # sums and the ReLU go in place (no backward here needs the overwritten values), so the
        # step holds two E x d tensors at once, not four: edges dominate a large graph's memory
        z = a.index_select(0, src)
        if self.edge_film is not None:
            z = z * (1 + self.edge_film(e))  # a new tensor: the product's backward needs the old one
        z += b.index_select(0, dst)
        z += e
        return z.relu_()

    def update_edges(self, e: Tensor, z: Tensor) -> Tensor:
        out = self.edge_out(z)
        out += e  # in place: the linear layer's backward needs its input, not its output
        return out

    def update_nodes(self, h: Tensor, messages: list[Tensor]) -> Tensor:
        """``messages``: each reduction of ``z`` along edges, then each against them."""
        return self.node_norm(h + self.node_mlp(torch.cat([h, *messages], dim=-1)))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        z = self.message(h, e, src, dst)
        messages = [scatter(z, index, h.size(0), aggr) for index in (dst, src) for aggr in self.aggrs]
        return self.update_nodes(h, messages), self.update_edges(e, z)
