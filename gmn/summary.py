"""Human-readable summaries of parameter graphs and a networkx view of small ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from converters.vocab import Activation, EdgeType, NodeType

if TYPE_CHECKING:
    import networkx as nx

    from converters import ParameterGraph


def _counts(values: torch.Tensor, enum) -> list[tuple[str, int]]:
    counts = torch.bincount(values.long(), minlength=len(enum))
    return [(enum(i).name.lower(), int(c)) for i, c in enumerate(counts) if c]


def summary(g: ParameterGraph) -> str:
    """Nodes and edges by type, activations, and parameters by layer."""
    lines = [
        f"parameter graph: {g.num_nodes} nodes, {g.edge_index.size(1)} edges, "
        f"{int(g.num_param_edges)} parameters ({int(g.num_tied_edges)} tied edges)",
        "nodes by type:      " + ", ".join(f"{k} {v}" for k, v in _counts(g.node_type, NodeType)),
        "edges by type:      " + ", ".join(f"{k} {v}" for k, v in _counts(g.edge_type, EdgeType)),
        "activations:        " + ", ".join(f"{k} {v}" for k, v in _counts(g.node_act, Activation)),
    ]
    if int(getattr(g, "nonfinite", torch.zeros(1)).sum()):
        lines.append(f"WARNING: {int(g.nonfinite.sum())} edge values are NaN or infinite")
    lines.append("parameters by layer:")
    layers: dict[str, int] = {}
    for name, shape, _ in g.param_index.params:
        layer = name.rsplit(".", 1)[0] if "." in name else name
        layers[layer] = layers.get(layer, 0) + (torch.Size(shape).numel())
    width = max((len(k) for k in layers), default=0)
    lines += [f"  {k:<{width}}  {v:>12,}" for k, v in layers.items()]
    return "\n".join(lines)


def to_networkx(g: ParameterGraph, max_edges: int = 1_000_000) -> nx.MultiDiGraph:
    """A ``networkx.MultiDiGraph`` with the graph's node and edge attributes."""
    if g.edge_index.size(1) > max_edges:
        raise ValueError(f"graph has {g.edge_index.size(1)} edges; networkx export is for graphs "
                         f"under {max_edges} (raise max_edges to force)")
    import networkx as nx

    out = nx.MultiDiGraph()
    for i in range(g.num_nodes):
        out.add_node(i, type=int(g.node_type[i]), depth=int(g.node_depth[i]),
                     index=int(g.node_index[i]), act=int(g.node_act[i]))
    src, dst = g.edge_index.tolist()
    for e, (s, d) in enumerate(zip(src, dst)):
        out.add_edge(s, d, type=int(g.edge_type[e]), pos=int(g.edge_pos[e]), value=float(g.edge_value[e]))
    return out
