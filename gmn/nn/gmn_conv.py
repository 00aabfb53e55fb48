"""Edge-updating message passing in the sense of Graph Metanetworks (Lim et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from .scatter import scatter


class GMNConv(MessagePassing):
    r"""Node and edge states both updated; messages flow along and against edges.

    .. math::
        e_{uv}' &= e_{uv} + W_o\,\sigma\big(A h_u + B h_v + C e_{uv}\big) \\
        m^{\rightarrow}_v &= \operatorname{mean}_{u \to v}\ \sigma\big(P h_u + Q e_{uv}'\big), \qquad
        m^{\leftarrow}_u = \operatorname{mean}_{u \to v}\ \sigma\big(P' h_v + Q' e_{uv}'\big) \\
        h_v' &= h_v + \mathrm{MLP}\big([h_v, m^{\rightarrow}_v, m^{\leftarrow}_v]\big)

    The first layer of each edge MLP is linear in its concatenated inputs, so it is split:
    ``A h``, ``B h``, ``P h``, ``P' h`` are computed once per node and gathered onto edges,
    instead of running an MLP on ``[h_u, h_v, e_uv]`` for every edge. Both states are
    layer-normalised after the update.
    """

    def __init__(self, hidden: int, aggr: str = "mean"):
        super().__init__(aggr=aggr)
        self.hidden = hidden
        self.node_proj = nn.Linear(hidden, 4 * hidden, bias=False)  # A, B, P, P'
        self.edge_proj = nn.Linear(hidden, hidden)  # C
        self.edge_out = nn.Linear(hidden, hidden)  # W_o
        self.msg_edge = nn.Linear(hidden, 2 * hidden)  # Q, Q'
        self.node_mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        a, b, p_fwd, p_bwd = self.node_proj(h).chunk(4, dim=-1)
        e = self.edge_norm(e + self.edge_out(F.silu(a[src] + b[dst] + self.edge_proj(e))))
        q_fwd, q_bwd = self.msg_edge(e).chunk(2, dim=-1)
        fwd = self.propagate(edge_index, p=p_fwd, q=q_fwd, size=(h.size(0), h.size(0)))
        bwd = self.propagate(edge_index.flip(0), p=p_bwd, q=q_bwd, size=(h.size(0), h.size(0)))
        h = self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=-1)))
        return h, e

    def message(self, p_j: Tensor, q: Tensor) -> Tensor:
        return F.silu(p_j + q)

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None,
                  dim_size: int | None = None) -> Tensor:
        return scatter(inputs, index, dim_size, reduce=self.aggr)
