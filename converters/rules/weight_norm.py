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
