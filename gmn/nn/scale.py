"""Scale and sign canonicalisation: the ScaleGMN symmetries on graphs of any architecture.

A ReLU neuron v may be rescaled (in-edges times s, out-edges over s, s > 0) and a tanh
neuron sign-flipped (s = -1) without changing the function; which neurons allow it comes
from the activation recorded in the graph (:func:`gmn.weightspace.symmetry.scalable_neurons`,
:func:`gmn.weightspace.symmetry.flippable_neurons`). In topological order, each such neuron gets

.. math::
    s_v = \\lVert (w_{uv} s_u)_{u \\to v} \\rVert \\ \\text{(scale)}, \\qquad
    s_v = \\operatorname{sign} \\textstyle\\sum_{u \\to v} w_{uv} s_u \\ \\text{(sign)},

with ``s = 1`` elsewhere (a neuron's ``SCALED`` copy, ``sin(30 v)``, shares ``s_v``), and every
parameter edge the canonical value ``w_uv s_u / s_v``. Rescaling or flipping neuron v
multiplies ``s_v`` by the same factor (by induction over depth), so canonical values are
invariant; an edge output ``y_uv`` in canonical units becomes equivariant as ``y_uv s_v / s_u``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from converters import edge_kinds
from converters.writer import PARAMETER

from ..weightspace.symmetry import flippable_neurons, scalable_neurons, scaled_copies
from .scatter import scatter


def canonical_scales(g, values: Tensor) -> Tensor:
    """``s`` per node (1 for neurons without a scale or sign symmetry)."""
    n = g.num_nodes
    scal, flip = scalable_neurons(g), flippable_neurons(g)
    unit, copy = scaled_copies(g, scal | flip)  # sin(30 h) moves with h: the next level reads the copy
    param = edge_kinds(g) == PARAMETER
    src, dst = g.edge_index[:, param]
    w = values[param]
    into = (scal | flip)[dst]
    src, dst, w = src[into], dst[into], w[into]
    depth = g.node_depth.long()[dst]
    s = torch.ones(n, dtype=values.dtype, device=values.device)
    for d in torch.unique(depth).tolist():  # a few levels: one per layer of the model
        at = depth == d
        contrib = (w[at] * s[src[at]]).unsqueeze(-1)
        norm = scatter(contrib * contrib, dst[at], n, "sum").squeeze(-1).sqrt()
        total = scatter(contrib, dst[at], n, "sum").squeeze(-1)
        level = torch.zeros(n, dtype=torch.bool, device=values.device)
        level[dst[at]] = True
        sign = torch.where(total < 0, -1.0, 1.0).to(values.dtype)
        s = torch.where(level & scal & (norm > 0), norm, s)
        s = torch.where(level & flip, sign, s)
        s[copy] = s[unit]
    return s


def canonicalise(g, values: Tensor) -> tuple[Tensor, Tensor]:
    """Edge values in canonical units, and the node scales used."""
    s = canonical_scales(g, values)
    src, dst = g.edge_index
    param = edge_kinds(g) == PARAMETER
    factor = torch.where(param, s[src] / s[dst], torch.ones_like(values))
    return values * factor, s


def decanonicalise(g, edge_out: Tensor, s: Tensor) -> Tensor:
    """Edge outputs in canonical units back to units that transform like the weights."""
    src, dst = g.edge_index
    param = edge_kinds(g) == PARAMETER
    factor = torch.where(param, s[dst] / s[src], torch.ones_like(s[src]))
    return edge_out * factor.unsqueeze(-1) if edge_out.dim() > 1 else edge_out * factor
