"""One metanetwork class: encoders, a stack of message-passing layers, a readout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from converters.vocab import NodeType

from ..choices import KINDS, POOLS, READOUTS
from ..nn import EdgeEncoder, GMNConv, NodeEncoder, PNAConv, canonicalise, decanonicalise, scatter
from ..nn.attention_pool import AttentionPool
from ..nn.relational_transformer import RelationalTransformerConv
from ..nn.tensor_pool import TensorPool


def node_graphs(g) -> Tensor:
    """The graph index of every node: ``g.batch`` for a batch, zeros for a single graph."""
    batch = getattr(g, "batch", None)
    return torch.zeros(g.num_nodes, dtype=torch.long, device=g.edge_index.device) if batch is None else batch


class GraphMetanetwork(nn.Module):
    """A metanetwork over (batches of) parameter graphs of any architecture.

    ``kind``: ``"gmn"`` (edge-updating GMN layers), ``"pna"`` (PNA-style baseline: NG-GNN),
    ``"scale_gmn"`` (GMN layers on scale/sign-canonical values: also invariant to ReLU
    rescaling and tanh sign flips) or ``"ng_t"`` (NG-T's relational transformer, attending
    over graph edges). ``readout``: ``"graph"`` (one invariant vector per
    graph: node states mean and max pooled, edge states mean pooled), ``"node"`` or
    ``"edge"`` (equivariant: one output per node / edge; edge outputs at parameter edges map back to weights with
    ``converters.parameter_edge_mask``). ``aggr``: the GMN layers' neighbourhood
    reduction(s), e.g. ``"mean"`` or ``"mean+max"``. ``node_features``: the width of extra
    per-node inputs (e.g. :func:`gmn.probes.probe_features`), projected and added to the node
    encoding; the model is invariant to a symmetry only if they are (probe features follow
    neuron permutations; ``"scale_gmn"`` divides them by each node's canonical scale, so a
    neuron's pre-activations, which rescale and flip with it, are read in canonical units). ``film``: GMN layers
    whose edge states gate the source neuron's term (:class:`~gmn.nn.GMNConv`).
    """

    def __init__(self, hidden: int = 64, layers: int = 4, kind: str = "gmn", readout: str = "graph",
                 out_dim: int = 1, aggr: str = "mean", node_features: int = 0, pool: str = "mean",
                 value_scale: float = 4.0, readout_norm: bool = False, film: bool = False):
        super().__init__()
        if kind not in KINDS or readout not in READOUTS:
            raise ValueError(f"kind must be one of {KINDS} and readout one of {READOUTS}")
        self.kind, self.readout, self.pools = kind, readout, tuple(pool.split("+"))
        self.nodes, self.edges = NodeEncoder(hidden), EdgeEncoder(hidden, scale=value_scale)
        self.node_inputs = nn.Linear(node_features, hidden) if node_features else None
        make = {"pna": lambda: PNAConv(hidden), "ng_t": lambda: RelationalTransformerConv(hidden)}.get(
            kind, lambda: GMNConv(hidden, aggr, film))
        self.convs = nn.ModuleList(make() for _ in range(layers))
        if any(p not in POOLS for p in self.pools):
            raise ValueError(f"pool must join some of {POOLS} with '+', got {pool!r}")
        self.attention = AttentionPool(hidden) if "attn" in self.pools else None
        self.tensors = TensorPool(hidden) if "tensor" in self.pools else None
        width = (2 + len(self.pools) + ("tensor" in self.pools)) * hidden if readout == "graph" else hidden
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        # pooled states of models of one family differ by little against their common part (an
        # average over many exchangeable neurons); standardising each feature over the batch puts
        # the differences, which are all the head can use, at unit scale
        self.readout_norm = nn.BatchNorm1d(width) if readout_norm and readout == "graph" else None

    def forward(self, g, values: Tensor | None = None, node_features: Tensor | None = None) -> Tensor:
        """Outputs for graph (or batch) ``g``; ``values`` replaces ``g.edge_value`` (all edges);
        ``node_features`` (``[num_nodes, node_features]``) is required when the model was built with them."""
        values = g.edge_value if values is None else values
        scales = None
        if self.kind == "scale_gmn":
            values, scales = canonicalise(g, values)
        h, e = self.nodes(g), self.edges(g, values)
        if self.node_inputs is not None:
            if node_features is None:
                raise ValueError("this metanetwork was built with node_features: pass them to forward")
            if scales is not None:  # a rescaled or flipped neuron's pre-activations move with it: canonical units too
                node_features = node_features / scales.to(node_features.dtype).unsqueeze(-1)
            h = h + self.node_inputs(node_features.to(h.dtype))
        for conv in self.convs:
            h, e = conv(h, e, g.edge_index)
        if self.readout == "node":
            return self.head(h)
        if self.readout == "edge":
            out = self.head(e)
            return out if scales is None else decanonicalise(g, out, scales)
        batch = node_graphs(g)
        size = int(g.num_param_edges.numel())
        edge_batch = batch[g.edge_index[0]]
        pooled = torch.cat([scatter(h, batch, size, "mean"), scatter(h, batch, size, "max"),
                            *(self._pool(g, h, e, edge_batch, size, p) for p in self.pools)], -1)
        return self.head(pooled if self.readout_norm is None else self.readout_norm(pooled))

    def _pool(self, g, h: Tensor, e: Tensor, index: Tensor, size: int, how: str) -> Tensor:
        if how == "output":
            # the model's output neurons never permute: after enough layers their states hold
            # what the whole network computes, which a mean over all nodes dilutes
            out = (g.node_type == int(NodeType.OUTPUT)).nonzero().squeeze(1)
            return scatter(h.index_select(0, out), node_graphs(g).index_select(0, out), size, "mean")
        if how == "tensor":
            return self.tensors(e, g, size)
        return self.attention(e, index, size) if how == "attn" else scatter(e, index, size, how)
