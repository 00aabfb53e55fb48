"""Permutation alignment of two models of one architecture (weight matching).

Ainsworth et al. 2023 ("Git Re-Basin") align model B to model A by choosing, one layer at a
time, the permutation of B's hidden neurons that maximises the inner product of the weights
each neuron shares with already-placed neighbours. On a parameter graph the same works for
any architecture: the candidate groups are the colour classes of the graph's structure
(neurons colour refinement cannot tell apart), a neuron's weights are its incident parameter
edges keyed by (other endpoint, edge type, position, direction), and the result is checked
to be an automorphism of the structure, so the aligned values describe the same function.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from converters import ParameterGraph, with_values
from converters.vocab import NodeType

from .symmetry import _is_automorphism, _structure, permute_values, refine


def _groups(g: ParameterGraph) -> list[Tensor]:
    node, label = _structure(g)
    colors = refine(node, g.edge_index[0], g.edge_index[1], label)
    hidden = g.node_type.long() == int(NodeType.HIDDEN)
    counts = torch.bincount(colors)
    return [(colors == c).nonzero().squeeze(1) for c in (counts > 1).nonzero().squeeze(1).tolist()
            if bool(hidden[colors == c].all())]


def _incidence(g: ParameterGraph, values: Tensor, group: Tensor, relabel: Tensor, label: Tensor):
    """(row in ``group``, slot key, value) of every parameter edge with exactly one endpoint in
    ``group``; the other endpoint is named through ``relabel``."""
    n = g.num_nodes
    src, dst = g.edge_index[:, : values.numel()]
    label = label[: values.numel()]
    row_of = torch.full((n,), -1, dtype=torch.long)
    row_of[group] = torch.arange(group.numel())
    rows, keys, vals = [], [], []
    for mine, other, direction in ((src, dst, 0), (dst, src, 1)):
        hit = (row_of[mine] >= 0) & (row_of[other] < 0)
        rows.append(row_of[mine[hit]])
        keys.append((relabel[other[hit]] * (int(label.max()) + 1) + label[hit]) * 2 + direction)
        vals.append(values[hit])
    return torch.cat(rows), torch.cat(keys), torch.cat(vals)


def weight_matching(reference: ParameterGraph, g: ParameterGraph, iterations: int = 30, seed: int = 0) -> Tensor:
    """Node map ``p`` (a structure automorphism) such that ``g``'s value on edge ``(p[u], p[v])``
    is close to ``reference``'s value on ``(u, v)``; both graphs must share one template."""
    if not (torch.equal(reference.edge_index, g.edge_index) and torch.equal(reference.edge_type, g.edge_type)):
        raise ValueError("weight matching needs two graphs of the same architecture (one template)")
    _, label = _structure(g)
    n = int(reference.num_param_edges)
    a, b = reference.edge_value[:n].double(), g.edge_value[:n].double()
    groups = _groups(g)
    p = torch.arange(g.num_nodes)
    rng = np.random.default_rng(seed)
    identity = torch.arange(g.num_nodes)
    for _ in range(iterations):
        changed = False
        for k in rng.permutation(len(groups)):
            group = groups[k]
            rows_a, keys_a, vals_a = _incidence(reference, a, group, p, label)
            rows_b, keys_b, vals_b = _incidence(g, b, group, identity, label)
            slots, inverse = torch.unique(torch.cat([keys_a, keys_b]), return_inverse=True)
            feat_a = torch.zeros(group.numel(), slots.numel(), dtype=torch.float64)
            feat_b = torch.zeros_like(feat_a)
            feat_a.index_put_((rows_a, inverse[: keys_a.numel()]), vals_a, accumulate=True)
            feat_b.index_put_((rows_b, inverse[keys_a.numel():]), vals_b, accumulate=True)
            _, cols = linear_sum_assignment((feat_a @ feat_b.T).numpy(), maximize=True)
            new = group[torch.as_tensor(cols)]
            if not torch.equal(p[group], new):
                p[group], changed = new, True
        if not changed:
            break
    src, dst = g.edge_index
    if not _is_automorphism(p, src, dst, label, g.num_nodes):
        raise ValueError("weight matching found no symmetry of this architecture (its interchangeable neurons "
                         "are tied across layers, e.g. by residual connections); alignment is not supported here")
    return p


def align(reference: ParameterGraph, g: ParameterGraph, iterations: int = 30) -> ParameterGraph:
    """``g`` relabelled by the hidden-neuron permutation that brings its weights closest to
    ``reference``'s: the same function, comparable coordinates."""
    p = weight_matching(reference, g, iterations)
    inverse = torch.empty_like(p)
    inverse[p] = torch.arange(p.numel())
    values, buffers, _ = permute_values(g, inverse)
    return with_values(g, values, buffers)


def aligned_distance(reference: ParameterGraph, g: ParameterGraph) -> float:
    """Relative L2 distance ``|a - align(a, b)| / |a|`` between parameter vectors."""
    n = int(reference.num_param_edges)
    a, b = reference.edge_value[:n], align(reference, g).edge_value[:n]
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


__all__ = ["align", "aligned_distance", "weight_matching"]
