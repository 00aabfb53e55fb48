"""Graph clean-up after building: flatten sums of sums, drop structure nothing reads."""

from __future__ import annotations

import torch
from torch import Tensor

from .vocab import EdgeType, NodeType

#: Nodes made by parameter-free structure; they are dropped when nothing reads them.
STRUCTURAL_NODES = (NodeType.SUM, NodeType.PRODUCT, NodeType.ATTENTION, NodeType.MERGE,
                    NodeType.ACTIVATION, NodeType.POSITIONAL, NodeType.NORM_GROUP)


def simplify(data: dict[str, Tensor], buffer_nodes: dict[str, tuple[int, Tensor]]) -> None:
    """In place: a sum read only by another sum joins it ((a + b) + c is one sum of three,
    so the order of a Python ``sum`` over experts is no structure); then dead ends go."""
    n = data["node_type"].numel()
    src, dst = data["edge_index"]
    ntype = data["node_type"].long()
    etype = data["edge_type"].long()
    out_deg = torch.bincount(src, minlength=n)
    is_sum = ntype == int(NodeType.SUM)
    residual = etype == int(EdgeType.RESIDUAL)
    # a sum whose only out-edge is a residual edge into another sum
    cand_edge = residual & is_sum[src] & is_sum[dst] & (out_deg[src] == 1)
    parent = torch.arange(n)
    parent[src[cand_edge]] = dst[cand_edge]
    for _ in range(64):
        nxt = parent[parent]
        if torch.equal(nxt, parent):
            break
        parent = nxt
    keep_edge = ~cand_edge
    dst = parent[dst]
    keep_node = torch.ones(n, dtype=torch.bool)
    keep_node[src[cand_edge]] = False
    src, dst, keep_edge = src, dst, keep_edge
    structural = torch.zeros(n, dtype=torch.bool)
    for t in STRUCTURAL_NODES:
        structural |= ntype == int(t)
    while True:
        live = keep_edge & keep_node[dst] & keep_node[src]
        deg = torch.bincount(src[live], minlength=n)
        dead = structural & keep_node & (deg == 0)
        if not bool(dead.any()):
            break
        keep_node &= ~dead
    keep_edge = keep_edge & keep_node[dst] & keep_node[src]
    num_fixed = int(data["num_param_edges"].sum() + data["num_tied_edges"].sum())
    if not bool(keep_edge[:num_fixed].all()):
        raise AssertionError("simplify would drop a parameter edge")
    new_id = torch.full((n,), -1, dtype=torch.long)
    new_id[keep_node] = torch.arange(int(keep_node.sum()))
    data["edge_index"] = new_id[torch.stack([src, dst])[:, keep_edge]]
    for key in ("edge_type", "edge_pos", "edge_value"):
        data[key] = data[key][keep_edge]
    for key in ("node_type", "node_depth", "node_index", "node_act"):
        data[key] = data[key][keep_node]
    for name, (dim, nodes) in buffer_nodes.items():
        buffer_nodes[name] = (dim, new_id[nodes])
