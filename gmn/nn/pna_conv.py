"""A PNA-style layer with edge features and edge updates (the NG-GNN baseline of
Kofinas et al., 2024), messages along and against edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scatter import degree, scatter

AGGREGATORS = ("mean", "max", "min", "std")


class PNAConv(nn.Module):
    r"""Principal neighbourhood aggregation with edge features, in both directions.

    .. math::
        m_{uv} &= \sigma(W_m [h_u, h_v, e_{uv}]) \\
        a_v &= \big[\ \bigoplus_{\rho \in \{\text{mean,max,min,std}\}} \rho_{u \to v}(m_{uv})\ \big]
               \otimes \big[1, \log(1 + d_v) / \delta\big] \\
        h_v' &= h_v + \mathrm{MLP}([h_v, a^{\rightarrow}_v, a^{\leftarrow}_v]), \qquad
        e_{uv}' = e_{uv} + \mathrm{MLP}([h_u', h_v', e_{uv}])

    Unlike :class:`~gmn.nn.GMNConv` the edge MLPs run on concatenated endpoint features, as
    in NG-GNN; this layer is the strong baseline. ``delta`` is the mean ``log(1 + degree)``
    of the training graphs (1 by default).
    """

    def __init__(self, hidden: int, delta: float = 1.0):
        super().__init__()
        self.hidden, self.delta = hidden, delta
        self.msg = nn.ModuleList(nn.Linear(3 * hidden, hidden) for _ in range(2))
        width = len(AGGREGATORS) * 2 * hidden
        self.node_mlp = nn.Sequential(nn.Linear(hidden + 2 * width, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.edge_mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)

    def _aggregate(self, m: Tensor, index: Tensor, n: int) -> Tensor:
        mean = scatter(m, index, n, "mean")
        sq = scatter(m * m, index, n, "mean")
        std = (sq - mean * mean).clamp(min=0).add(1e-6).sqrt()
        agg = torch.cat([mean, scatter(m, index, n, "max"), scatter(m, index, n, "min"), std], -1)
        scale = torch.log1p(degree(index, n, m.dtype)).unsqueeze(-1) / self.delta
        return torch.cat([agg, agg * scale], -1)

    def _pair_linear(self, layer: nn.Linear, h: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """``layer([h_src, h_dst, e])`` computed as ``W_1 h`` and ``W_2 h`` per node, gathered,
        plus ``W_3 e``: the same map with two n x d products instead of E x 3d."""
        w_src, w_dst, w_edge = layer.weight.split(self.hidden, dim=1)
        return (F.linear(h, w_src).index_select(0, src) + F.linear(h, w_dst).index_select(0, dst)
                + F.linear(e, w_edge, layer.bias))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        n = h.size(0)
        fwd = self._aggregate(F.silu(self._pair_linear(self.msg[0], h, e, src, dst)), dst, n)
        bwd = self._aggregate(F.silu(self._pair_linear(self.msg[1], h, e, src, dst)), src, n)
        h = self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], -1)))
        first, rest = self.edge_mlp[0], self.edge_mlp[1:]
        e = self.edge_norm(e + rest(self._pair_linear(first, h, e, src, dst)))
        return h, e
