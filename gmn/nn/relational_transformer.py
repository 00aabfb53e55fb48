"""The relational transformer of NG-T (Kofinas et al., 2024), as attention over graph edges."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .scatter import scatter


def _mlp(width: int, hidden: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, width))


class RelationalTransformerConv(nn.Module):
    r"""Edge-conditioned multi-head attention with edge updates (the NG-T layer of "Graph
    Neural Networks for Learning Equivariant Representations of Neural Networks", Kofinas
    et al., ICLR 2024), over the edges of a parameter graph.

    Every edge :math:`u \to v` with state :math:`e_{uv}` carries two messages: one along it
    (received by :math:`r = v` from :math:`s = u`, direction :math:`d = {\rightarrow}`) and
    one against it (:math:`r = u`, :math:`s = v`, :math:`d = {\leftarrow}`). The edge
    modulates the query, the key and the value of its messages:

    .. math::
        q_{rs} &= W_Q h_r + Q_d\, e_{uv}, \qquad k_{rs} = W_K h_s + K_d\, e_{uv}, \qquad
        v_{rs} = (W_V h_s) \odot (M_d\, e_{uv}) + V_d\, e_{uv} \\
        \alpha^{(k)}_{rs} &= \operatorname{softmax}_{s \in \mathcal{N}(r)}
            \big( q^{(k)}_{rs} \cdot k^{(k)}_{rs} / \sqrt{d_k} \big) \\
        h_r' &= \mathrm{LN}\Big(h_r + W_O \big\Vert_k \textstyle\sum_{s \in \mathcal{N}(r)}
            \alpha^{(k)}_{rs}\, v^{(k)}_{rs}\Big), \qquad
        h_r'' = \mathrm{LN}\big(h_r' + \mathrm{MLP}(h_r')\big) \\
        e_{uv}' &= \mathrm{LN}\big(e_{uv} + \mathrm{MLP}(W_e e_{uv} + W_s h''_u + W_t h''_v)\big),
            \qquad e_{uv}'' = \mathrm{LN}\big(e_{uv}' + \mathrm{MLP}(e_{uv}')\big)

    :math:`k` indexes the ``heads``, :math:`d_k` is a head's width, and
    :math:`\mathcal{N}(r)` is every message node :math:`r` receives, along and against its
    edges together (one softmax per node and head); a node without edges receives zero.
    Separate edge maps per direction keep "feeds" and "is fed by" apart, as NG-T's
    concatenation of :math:`e_{ij}` and :math:`e_{ji}` does on its dense adjacency.

    The paper attends over all pairs of nodes, with a zero edge state where there is no
    edge: :math:`O(N^2)` per layer, too much for a graph of a whole model. Here a node
    attends over its graph neighbours only (both directions), so a layer costs
    :math:`O(E\, d)` time and memory, like message passing. It is equivariant to every
    automorphism of the graph: the softmax and the sums run over sets of edges.
    """

    def __init__(self, hidden: int, heads: int = 4, attn_hidden: int | None = None):
        super().__init__()
        attn_hidden = attn_hidden or hidden
        if attn_hidden % heads:
            raise ValueError(f"attention width {attn_hidden} is not a multiple of heads {heads}")
        self.heads, self.attn_hidden = heads, attn_hidden
        self.node_qkv = nn.Linear(hidden, 3 * attn_hidden, bias=False)
        # Q_d, K_d, M_d, V_d of each direction
        self.edge_qkv = nn.ModuleList(nn.Linear(hidden, 4 * attn_hidden, bias=False) for _ in range(2))
        self.attn_out = nn.Linear(attn_hidden, hidden)
        self.node_mlp = _mlp(hidden, 2 * hidden)
        self.node_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))
        self.edge_in = nn.Linear(hidden, 2 * hidden)  # W_e (and the MLP's hidden bias)
        self.edge_ends = nn.Linear(hidden, 4 * hidden, bias=False)  # W_s, W_t
        self.edge_hidden_out = nn.Linear(2 * hidden, hidden)
        self.edge_mlp = _mlp(hidden, 2 * hidden)
        self.edge_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))

    def _messages(self, qkv: tuple[Tensor, Tensor, Tensor], e: Tensor, direction: int, recv: Tensor,
                  send: Tensor) -> tuple[Tensor, Tensor]:
        """Attention scores (``E x heads``) and values (``E x attn_hidden``) of one direction."""
        q_node, k_node, v_node = qkv
        q_edge, k_edge, m_edge, v_edge = self.edge_qkv[direction](e).chunk(4, dim=-1)
        q = q_node.index_select(0, recv) + q_edge
        k = k_node.index_select(0, send) + k_edge
        value = v_node.index_select(0, send) * m_edge + v_edge
        width = self.attn_hidden // self.heads
        score = (q * k).view(-1, self.heads, width).sum(-1) / math.sqrt(width)
        return score, value

    def attend(self, h: Tensor, e: Tensor, edge_index: Tensor) -> Tensor:
        """``W_O`` times the attention output of every node (``N x hidden``)."""
        src, dst = edge_index
        n = h.size(0)
        qkv = self.node_qkv(h).chunk(3, dim=-1)
        along, against = self._messages(qkv, e, 0, dst, src), self._messages(qkv, e, 1, src, dst)
        recv = torch.cat([dst, src])
        score = torch.cat([along[0], against[0]])
        score = score.to(torch.promote_types(score.dtype, torch.float32))  # the softmax in float32 under autocast
        score = score - scatter(score, recv, n, "max").index_select(0, recv)
        weight = score.exp()
        weight = weight / scatter(weight, recv, n, "sum").index_select(0, recv).clamp_min(1e-30)
        value = torch.cat([along[1], against[1]])
        value = value.view(-1, self.heads, self.attn_hidden // self.heads) * weight.unsqueeze(-1).to(value.dtype)
        return self.attn_out(scatter(value.flatten(1), recv, n, "sum").to(h.dtype))

    def update_edges(self, h: Tensor, e: Tensor, edge_index: Tensor) -> Tensor:
        src, dst = edge_index
        ends_src, ends_dst = self.edge_ends(h).chunk(2, dim=-1)
        z = self.edge_in(e) + ends_src.index_select(0, src) + ends_dst.index_select(0, dst)
        e = self.edge_norms[0](e + self.edge_hidden_out(nn.functional.gelu(z)))
        return self.edge_norms[1](e + self.edge_mlp(e))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        h = self.node_norms[0](h + self.attend(h, e, edge_index))
        h = self.node_norms[1](h + self.node_mlp(h))
        return h, self.update_edges(h, e, edge_index)
