"""A metanetwork pass over graphs too big for one pass: edges streamed in chunks.

A GMN layer needs, per node, reductions of its edges' messages, and per edge, its own
previous state. Edge states are never stored: for layer ``l`` each chunk's state is
recomputed from its encoding through layers ``1 .. l-1`` (node states of every layer are
kept; nodes are few). Memory is the node states plus a constant times ``chunk_size``;
compute is ``O(L^2 E)`` instead of ``O(L E)``. The graph may stay in host memory while the
network runs on a GPU: each chunk is moved there when it is used. Outputs equal
``net(g)`` up to float summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from converters.writer import PARAMETER, STRUCTURAL, TIED

from ..nn.scatter import degree
from .metanetwork import GraphMetanetwork


class _Edges:
    """Chunks of one graph's edges on the network's device."""

    def __init__(self, g, device: torch.device, chunk_size: int):
        self.g, self.device, self.chunk_size = g, device, chunk_size
        self.num_edges = g.edge_index.size(1)
        self.p, self.t = int(g.num_param_edges.sum()), int(g.num_tied_edges.sum())

    def __iter__(self):
        for start in range(0, self.num_edges, self.chunk_size):
            stop = min(start + self.chunk_size, self.num_edges)
            ids = torch.arange(start, stop)
            kind = torch.full((stop - start,), STRUCTURAL)
            kind[ids < self.p + self.t] = TIED
            kind[ids < self.p] = PARAMETER
            src, dst = (x.to(self.device) for x in self.g.edge_index[:, start:stop])
            parts = (self.g.edge_type[start:stop], kind, self.g.edge_pos[start:stop], self.g.edge_value[start:stop])
            yield start, stop, src, dst, tuple(x.to(self.device) for x in parts)


def _states(net: GraphMetanetwork, h: list[Tensor], layers: int, src, dst, parts) -> Tensor:
    """Edge states after ``layers`` layers, recomputed from the encoding."""
    e = net.edges.encode(*parts)
    for conv, h_k in zip(net.convs[:layers], h):
        e = conv.update_edges(e, conv.message(h_k, e, src, dst))
    return e


def _reduce_into(acc: dict, z: Tensor, index: Tensor, aggr: str) -> None:
    if aggr in ("sum", "mean"):
        acc[aggr].index_add_(0, index, z)
    elif aggr == "max":
        acc[aggr].scatter_reduce_(0, index.view(-1, 1).expand_as(z), z, "amax", include_self=True)
    else:
        raise ValueError(f"chunked passes support sum, mean and max reductions, not {aggr!r}")


@torch.no_grad()
def chunked_forward(net: GraphMetanetwork, g, chunk_size: int = 1 << 20) -> Tensor:
    """``net(g)`` for one (huge) graph, ``chunk_size`` edges at a time; ``net.kind == "gmn"``.

    Graph readout: one row. Node readout: one row per node. Edge readout: one row per
    edge (on the network's device; ``[converters.parameter_edge_mask(g)]`` selects the
    parameter edges, every parameter covered).
    """
    if net.kind != "gmn":
        raise ValueError(f"chunked passes support kind='gmn', not {net.kind!r}")
    if net.readout == "graph" and net.pools != ("mean",):
        raise ValueError(f"chunked passes pool edges by their mean only, not {'+'.join(net.pools)!r}")
    if getattr(g, "batch", None) is not None and int(g.num_param_edges.numel()) > 1:
        raise ValueError("chunked passes take one graph, not a batch")
    device = next(net.parameters()).device
    edges = _Edges(g, device, chunk_size)
    n = int(g.num_nodes)
    in_deg = degree(g.edge_index[1], n).to(device).clamp(min=1).unsqueeze(-1)
    out_deg = degree(g.edge_index[0], n).to(device).clamp(min=1).unsqueeze(-1)
    h = [net.nodes(_node_view(g, device))]
    for layer, conv in enumerate(net.convs):
        acc = [{a: _empty(a, n, h[-1]) for a in conv.aggrs} for _ in range(2)]
        for _, _, src, dst, parts in edges:
            e = _states(net, h, layer, src, dst, parts)
            z = conv.message(h[layer], e, src, dst)
            for side, index in zip(acc, (dst, src)):
                for aggr in conv.aggrs:
                    _reduce_into(side, z, index, aggr)
        messages = [_finish(side[a], a, deg) for side, deg in zip(acc, (in_deg, out_deg)) for a in conv.aggrs]
        h.append(conv.update_nodes(h[layer], messages))
    if net.readout == "node":
        return net.head(h[-1])
    layers = len(net.convs)
    if net.readout == "edge":
        out = torch.empty(edges.num_edges, net.head[-1].out_features, device=device)
        for start, stop, src, dst, parts in edges:
            out[start:stop] = net.head(_states(net, h, layers, src, dst, parts))
        return out
    edge_sum = torch.zeros(h[-1].size(1), device=device)
    for _, _, src, dst, parts in edges:
        edge_sum += _states(net, h, layers, src, dst, parts).sum(0)
    pooled = torch.cat([h[-1].mean(0), h[-1].max(0).values, edge_sum / max(edges.num_edges, 1)])
    pooled = pooled.unsqueeze(0)
    return net.head(pooled if net.readout_norm is None else net.readout_norm(pooled))


def _node_view(g, device: torch.device):
    """The node attributes only, on ``device`` (the node encoder reads nothing else)."""
    from torch_geometric.data import Data

    keys = ("node_type", "node_depth", "node_index", "node_act")
    return Data(**{k: g[k].to(device) for k in keys})


def _empty(aggr: str, n: int, like: Tensor) -> Tensor:
    fill = float("-inf") if aggr == "max" else 0.0
    return torch.full((n, like.size(1)), fill, device=like.device, dtype=like.dtype)


def _finish(acc: Tensor, aggr: str, deg: Tensor) -> Tensor:
    if aggr == "mean":
        return acc / deg
    if aggr == "max":
        return torch.where(torch.isinf(acc), torch.zeros_like(acc), acc)  # nodes without edges: 0
    return acc
