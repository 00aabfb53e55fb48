"""Weight normalisation: ``w = g * v / ||v||`` (``aten._weight_norm``; what
``nn.utils.weight_norm`` and ``parametrizations.weight_norm`` trace to).

Both ``v`` and ``g`` are parameters. The layer that reads ``w`` makes its edges from ``v``
(one per scalar, as for any weight); each scalar of ``g`` becomes an edge into a *gain*
node of its own. Once every op is converted, each gain node is tied to what its slice of
``v`` belongs to in the graph (``edge_pos`` says which): the output neuron (``dim`` is the
output axis, the default; pos 0), the input neuron (``dim`` is the input axis; pos 1) and
the layer's output neurons (pos 2), so that gains of two layers reading one neuron are
never swapped, or, for an axis with no neurons (Wav2Vec2's kernel axis), every output
neuron, with pos ``3 + k`` for slice ``k``. A permutation of
neurons then moves ``g`` with ``v``'s rows or columns; the norm ``||v||`` is taken over
the other axes, which permutations only reorder.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import torch
from torch import Tensor
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo
from ..vocab import EdgeType, NodeType
from .common import whole


@register_op("aten._weight_norm", "aten._weight_norm_interface")
def weight_norm(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    v, g = ctx.info(node.args[0]), ctx.info(node.args[1])
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if v is None or v.param is None or g is None or g.param is None:
        raise ctx.fail("weight norm of tensors that are not parameters")
    n = g.flat.numel()
    shape = tuple(v.flat.shape)
    if n > 1 and (dim == -1 or n != shape[dim]):
        raise ctx.fail(f"weight norm gain {g.param} of {n} scalars does not fit {v.param} of shape {shape}")
    gains = ctx.new_neurons(n, NodeType.CONSTANT, 1)
    source = ctx.new_neurons(1, NodeType.BIAS, 0)
    flat = None if whole(ctx, g) else g.flat.reshape(-1)
    ctx.builder.param_edges(g.param, source.expand(n), gains, EdgeType.NORM_WEIGHT, flat=flat, shape=(n,))
    stride = math.prod(shape[dim + 1:]) if n > 1 else 1
    ctx.finalisers.append(lambda: _tie_gains(ctx, v.param, v.flat, gains, stride))
    if op_name(node.target) == "aten._weight_norm_interface":
        return [v, nonneuron(tuple(node.meta["val"][1].shape))]
    return v


def _tie_gains(ctx: Context, param: str, v_flat: Tensor, gains: Tensor, stride: int) -> None:
    """Edges from each gain node to what its slice of ``v`` feeds, in every use of ``v``."""
    n = gains.numel()
    slice_of = torch.full((ctx.param_tensor(param).numel(),), -1, dtype=torch.long)
    slice_of[v_flat.reshape(-1)] = (v_flat.reshape(-1) // stride) % n  # scalars the weight norm covers
    for block in ctx.builder.uses(param):
        src, dst, pos = block.columns()
        scalar = torch.arange(block.size) if block.flat is None else block.flat
        k = slice_of[scalar]
        keep = k >= 0
        if not bool(keep.any()):
            continue
        src, dst, pos, k = src[keep], dst[keep], pos[keep], k[keep]
        if n == 1 or _determines(dst, k):  # gains of output neurons (or one gain for all)
            _edges(ctx, gains, k, dst, 0)
        elif _determines(src, k):  # gains of input neurons, and of this layer: gains of two
            _edges(ctx, gains, k, src, 1)  # layers reading one neuron are not each other's
            _edges(ctx, gains, k, dst, 2)
        else:  # an axis without neurons: the gains are told apart by number
            if not _determines(block.etype * (int(pos.max()) + 1) + pos, k):
                ctx.builder.pin(torch.cat([src, dst]), f"weight norm of {param}: its slices are no edge label")
            _edges(ctx, gains, k, dst, None)


def _edges(ctx: Context, gains: Tensor, k: Tensor, nodes: Tensor, pos: int | None) -> None:
    """One edge from gain ``k[i]`` to ``nodes[i]`` per distinct pair; ``edge_pos`` ``pos``, or
    ``3 + k`` when ``None``."""
    pairs = torch.unique(torch.stack([k, nodes]), dim=1)
    ctx.builder.edges(gains[pairs[0]], pairs[1], EdgeType.PRODUCT, pairs[0] + 3 if pos is None else pos)


def _determines(key: Tensor, k: Tensor) -> bool:
    """Whether every value of ``key`` comes with one value of ``k``."""
    if key.numel() == 0:
        return True
    return torch.unique(torch.stack([key, k]), dim=1).shape[1] == torch.unique(key).numel()


# Weights computed from a parameter -------------------------------------------------------------
#
# ``conv2d(x, standardise(w))`` (BiT), ``linear(x, 2 * w)``: the layer's edges hold the parameter's
# scalars, so a symmetry moves ``w``; the model computes ``f(w)``. That is sound when ``f``
# commutes with every move the graph can make of ``w``'s scalars: ``f`` is elementwise, or acts on
# groups of scalars (rows) alike and symmetrically (statistics over the group, then elementwise),
# and a symmetry maps groups onto groups. The tensor keeps the parameter (``TensorInfo.computed``
# says how it was computed); the op that finally makes edges from it gets a marker
# (``mark_computed``): a ``NORM_GROUP`` node joined to the neurons the edges feed, its edge
# position coding the function and how its groups sit on the edges (per output neuron, per input
# neuron, per edge, one group), so a layer computing ``f(w)`` is never taken for one reading ``w``
# or computing another function. Any other function, or groups that fit no such pattern, pin the
# layer's neurons at both ends: then every scalar stays where it is.


def computed(ctx: Context, x: TensorInfo, code: tuple, groups: Tensor | None) -> TensorInfo:
    """``x`` (a parameter, or a tensor already computed from one) passed through a function coded
    by ``code``; ``groups``: a group id per scalar of the parameter for a function that acts on
    groups alike and symmetrically (standardisation of rows), ``None`` for an elementwise one.
    ``code`` ``None``: a function nobody proved row-wise (its layer is pinned)."""
    before = x.computed or ((), ())
    if code is None or before[1] is None:
        return replace(x, computed=(before[0] + (("opaque",),), None))
    parts = before[1] + ((groups,) if groups is not None else ())
    return replace(x, computed=(before[0] + (code,), parts))


def standardised(ctx: Context, x: TensorInfo, channel_dim: int, code: tuple) -> TensorInfo:
    """A parameter normalised per channel along ``channel_dim`` with statistics over the rest
    (``batch_norm(w.reshape(1, out, -1), training=True)`` without an affine)."""
    n = ctx.param_tensor(x.param).numel()
    flat = x.flat.movedim(channel_dim, 0)
    rows = flat.reshape(flat.shape[0], -1)
    groups = torch.full((n,), -1, dtype=torch.long)
    groups[rows] = torch.arange(rows.shape[0]).view(-1, 1).expand_as(rows)
    # every scalar once: each element of the result is a function of its own scalar's group
    if rows.numel() != n or torch.unique(rows).numel() != n:
        return computed(ctx, x, None, None)
    return computed(ctx, x, code, groups)


def mark_computed(ctx: Context, info: TensorInfo, blocks: list) -> None:
    """Edges an op made from a computed weight: mark the neurons they feed (see above)."""
    code, parts = info.computed
    ends = []
    kinds = []
    for block in blocks:
        src, dst, pos = block.columns()
        ends += [src, dst]
        scalar = torch.arange(block.size) if block.flat is None else block.flat.reshape(-1)
        if parts is None:
            kinds.append(None)
            continue
        for groups in parts:
            g = groups[scalar]
            kind = next((k for k, key in (("output", dst), ("input", src), ("edge", src * (dst.max() + 1) + dst),
                                          ("one", torch.zeros_like(g)))
                         if _determines(key, g) and _determines(g, key)), None)
            kinds.append(kind)
    if not blocks:
        return
    ends = torch.cat([e.reshape(-1) for e in ends])
    if any(k is None for k in kinds):
        ctx.builder.pin(ends, f"{info.param} is used through a function of it that is not proven "
                              f"row-wise ({code}) in {ctx.path() or '<top level>'}")
        return
    key = repr((code, tuple(kinds)))
    variant = zlib.crc32(key.encode()) % (2**31 - 1) + 1
    marker = ctx.new_neurons(1, NodeType.NORM_GROUP, 0)
    dst = torch.unique(torch.cat([b.columns()[1].reshape(-1) for b in blocks]))
    ctx.builder.edges(marker.expand(dst.numel()), dst, EdgeType.NORM_GROUP, variant)
