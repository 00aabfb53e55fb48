"""Normalisation layers: BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm.

The scale of channel ``c`` is an edge from the input neuron to a new neuron, the shift
an edge from the layer's bias node. BatchNorm running statistics stay buffers, tied to
the channels' nodes so that permutations carry them along.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, channel_ids, distinct_ids
from ..vocab import EdgeType, NodeType
from .common import affine, varies
from .weight_norm import computed, standardised


def _channel_view(p: TensorInfo | None, ndim: int, dim: int) -> TensorInfo | None:
    """A per-channel parameter laid along axis ``dim`` of an ``ndim``-D tensor."""
    if p is None:
        return None
    view = [1] * ndim
    view[dim] = -1
    return TensorInfo(p.ids.reshape(view), p.pos.reshape(view), param=p.param, flat=p.flat.reshape(view))


def _norm(ctx: Context, x: TensorInfo, w, b, dim: int | None) -> TensorInfo:
    shape = ctx.shape()
    if any(p is not None and p.param is None and p.has_neurons for p in (w, b)):
        raise ctx.fail("normalisation scale or shift computed from activations")
    # a constant scale or shift (ONNX spells "no affine" as ones and zeros) has no parameters
    w, b = (p if p is not None and p.param is not None else None for p in (w, b))
    if dim is not None:
        w, b = _channel_view(w, len(shape), dim), _channel_view(b, len(shape), dim)
    return affine(ctx, x, shape, w, b, EdgeType.NORM_WEIGHT, EdgeType.NORM_BIAS)


def _keep_buffers(ctx: Context, out: TensorInfo, buffers: list[Node | None]) -> None:
    """Tie running statistics to their channels' nodes, so that permutations carry them. When
    the channel axis does not hold one neuron per channel (neurons run along another axis: a
    ``(batch, channels, length)`` input with features along ``length``), a statistic cannot
    follow a node: the output's neurons are pinned and the statistics stay as they are."""
    buffers = [b for b in buffers if isinstance(b, Node) and b in ctx.buffer_names]
    if not buffers:
        return
    if any(varies(out.ids, d) for d in range(2, out.ids.dim())):
        ctx.builder.pin(distinct_ids(out.ids), f"running statistics in {ctx.path() or '<top level>'} are "
                                               "per channel, its neurons are not")
        return
    nodes = channel_ids(out.ids, 1)
    for buf in buffers:
        if isinstance(buf, Node) and buf in ctx.buffer_names:
            ctx.builder.buffer_nodes[ctx.buffer_names[buf]] = (0, nodes)


@register_op("aten.batch_norm", "aten._native_batch_norm_legit_no_training", "aten.instance_norm",
             "aten._native_batch_norm_legit", "aten.native_batch_norm")
def batch_norm(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    x, w, b = (ctx.info(a) for a in node.args[:3])
    if x is not None and x.param is not None:  # a weight computed from a parameter (BiT's standardisation)
        out = _standardised(ctx, node, x, w, b)
        if isinstance(node.meta["val"], (tuple, list)):
            return [out] + [nonneuron(tuple(v.shape)) for v in node.meta["val"][1:]]
        return out
    out = _norm(ctx, x, w, b, 1)
    _keep_buffers(ctx, out, list(node.args[3:5]))
    if isinstance(node.meta["val"], (tuple, list)):
        return [out] + [ctx.info(None) for _ in node.meta["val"][1:]]
    return out


def _standardised(ctx: Context, node: Node, x: TensorInfo, w, b) -> TensorInfo:
    """Batch statistics of a parameter, per channel (axis 1), without an affine: every channel
    standardised alike (weight standardisation). Running statistics or an affine make the
    channels' functions differ: a function nobody proved row-wise (its layer is pinned)."""
    name = op_name(node.target)
    a = list(node.args)
    training = {"aten.batch_norm": 5, "aten._native_batch_norm_legit": 5 if len(a) > 7 else 3,
                "aten.native_batch_norm": 5}.get(name)
    if training is None or len(a) <= training or a[training] is not True or w is not None or b is not None:
        return computed(ctx, x, None, None)
    eps = a[-1] if name != "aten.batch_norm" else a[7]
    return standardised(ctx, x, 1, ("standardise", repr(eps)))


@register_op("aten.layer_norm", "aten.native_layer_norm")
def layer_norm(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    x = ctx.info(node.args[0])
    w = ctx.info(node.args[2]) if len(node.args) > 2 else None
    b = ctx.info(node.args[3]) if len(node.args) > 3 else None
    out = _norm(ctx, x, w, b, None)
    if op_name(node.target) == "aten.native_layer_norm":
        return [out, None, None]
    return out


@register_op("aten.rms_norm")
def rms_norm(ctx: Context, node: Node) -> TensorInfo:
    x = ctx.info(node.args[0])
    w = ctx.info(node.args[2]) if len(node.args) > 2 else None
    return _norm(ctx, x, w, None, None)


@register_op("aten.group_norm", "aten.native_group_norm")
def group_norm(ctx: Context, node: Node) -> TensorInfo | list:
    a = node.args
    if op_name(node.target) == "aten.native_group_norm":  # (x, w, b, N, C, HxW, groups, eps)
        x, w, b, groups = ctx.info(a[0]), ctx.info(a[1]), ctx.info(a[2]), int(a[6])
        return [_group_norm(ctx, x, w, b, groups), None, None]
    x, groups = ctx.info(a[0]), int(a[1])
    w = ctx.info(a[2]) if len(a) > 2 else None
    b = ctx.info(a[3]) if len(a) > 3 else None
    return _group_norm(ctx, x, w, b, groups)


def _group_norm(ctx: Context, x: TensorInfo, w, b, groups: int) -> TensorInfo:
    out = _norm(ctx, x, w, b, 1)
    channels = channel_ids(out.ids, 1)
    # channels are interchangeable only inside their group: a node per group says which
    group_nodes = ctx.new_neurons(groups, NodeType.NORM_GROUP, ctx.depth(out) - 1)
    members = group_nodes.repeat_interleave(channels.numel() // groups)
    ctx.builder.edges(members, channels, EdgeType.NORM_GROUP)
    return out




@register_op("gmn.local_response_norm")
def local_response_norm(ctx: Context, node: Node) -> TensorInfo:
    """Each channel is normalised by a window of its neighbours: one node per channel with
    an edge from every channel in its window, the window offset as position. Only the
    channel order's reversal survives as a symmetry, as for the function itself."""
    x, size = ctx.info(node.args[0]), int(node.args[1])
    channels = channel_ids(x.ids, 1)
    n = channels.numel()
    out = ctx.new_neurons(n, NodeType.SUM, ctx.depth(x))
    offsets = torch.arange(-(size // 2), (size - 1) // 2 + 1)
    src = torch.arange(n).view(n, 1) + offsets.view(1, -1)
    inside = (src >= 0) & (src < n)
    dst = torch.arange(n).view(n, 1).expand_as(src)
    pos = (offsets + size // 2).view(1, -1).expand_as(src)
    ctx.builder.edges(channels[src[inside]], out[dst[inside]], EdgeType.RESIDUAL, pos[inside])
    return ctx.neurons_along(out, ctx.shape(), 1)
