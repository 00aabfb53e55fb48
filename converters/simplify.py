"""Graph clean-up after building: flatten sums of sums, drop structure nothing reads.

Only structural edges (after the parameter and tied edges) can go, so the work is on
that tail; parameter edges are just renumbered when nodes go.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .vocab import EdgeType, NodeType

#: Nodes made by parameter-free structure; they are dropped when nothing reads them.
STRUCTURAL_NODES = (NodeType.SUM, NodeType.PRODUCT, NodeType.ATTENTION, NodeType.MERGE,
                    NodeType.ACTIVATION, NodeType.POSITIONAL, NodeType.NORM_GROUP)


def simplify(data: dict[str, Tensor], buffer_nodes: dict[str, tuple[int, Tensor]], sources: Tensor) -> None:
    """In place: a sum read only by another sum joins it ((a + b) + c is one sum of three,
    so the order of a Python ``sum`` over experts is no structure); then dead ends go.

    ``sources`` marks nodes with parameter or tied out-edges, so the (large) parameter
    part of the edge list is never scanned, only renumbered when nodes go."""
    n = data["node_type"].numel()
    fixed = int(data["num_param_edges"].sum() + data["num_tied_edges"].sum())
    src, dst = data["edge_index"][:, fixed:]
    ntype = data["node_type"].long()
    out_deg = torch.bincount(src, minlength=n) + 2 * sources.long()
    is_sum = ntype == int(NodeType.SUM)
    residual = data["edge_type"][fixed:].long() == int(EdgeType.RESIDUAL)
    # a sum whose only out-edge is a residual edge into another sum joins that sum
    joins = residual & is_sum[src] & is_sum[dst] & (out_deg[src] == 1) & (data["node_index"][src] < 0)
    parent = torch.arange(n)
    parent[src[joins]] = dst[joins]
    while True:
        nxt = parent[parent]
        if torch.equal(nxt, parent):
            break
        parent = nxt
    dst = parent[dst]
    keep_node = torch.ones(n, dtype=torch.bool)
    keep_node[src[joins]] = False
    keep_edge = ~joins
    out_deg -= torch.bincount(src[joins], minlength=n)
    structural = torch.zeros(n, dtype=torch.bool)
    for t in STRUCTURAL_NODES:
        structural |= ntype == int(t)
    structural &= data["node_index"] < 0  # pinned nodes stay: they hold what a rule could not record
    dead = structural & keep_node & (out_deg == 0)
    while bool(dead.any()):  # structural nodes only have structural in-edges
        keep_node &= ~dead
        going = keep_edge & dead[dst]
        keep_edge &= ~going
        out_deg -= torch.bincount(src[going], minlength=n)
        dead = structural & keep_node & (out_deg == 0)
    if bool(keep_node.all()) and bool(keep_edge.all()):
        data["edge_index"][1, fixed:] = dst
        return
    new_id = torch.full((n,), -1, dtype=torch.long)
    new_id[keep_node] = torch.arange(int(keep_node.sum()))
    edge_index = data["edge_index"]
    step = 1 << 22
    for a in range(0, fixed, step):  # in place, chunk by chunk: no second copy of the big part
        b = min(a + step, fixed)
        edge_index[:, a:b] = new_id[edge_index[:, a:b]]
    tail = new_id[torch.stack([src, dst])[:, keep_edge]]
    data["edge_index"] = torch.cat([edge_index[:, :fixed], tail], 1)
    for key in ("edge_type", "edge_pos", "edge_value"):
        data[key] = torch.cat([data[key][:fixed], data[key][fixed:][keep_edge]])
    for key in ("node_type", "node_depth", "node_index", "node_act"):
        data[key] = data[key][keep_node]
    for name, (dim, nodes) in buffer_nodes.items():
        buffer_nodes[name] = (dim, new_id[nodes])
