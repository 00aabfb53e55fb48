"""Convolutions (any dimension, stride, padding, dilation, groups) and transposed ones.

One edge per weight scalar, from input channel to output channel; ``edge_pos`` is the
kernel offset (flat index into the kernel window).
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from ..context import Context
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo
from ..vocab import EdgeType, NodeType
from .common import bias_edges, channel_neurons, whole


def _args(node: Node) -> tuple[bool, int]:
    """(transposed, groups) for every convolution overload."""
    name = op_name(node.target)
    a = list(node.args)
    if name == "aten.convolution":
        return bool(a[6]), int(a[8])
    if name.startswith("aten.conv_transpose"):
        return True, int(a[6]) if len(a) > 6 else int(node.kwargs.get("groups", 1))
    return False, int(a[6]) if len(a) > 6 else int(node.kwargs.get("groups", 1))


@register_op("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution",
             "aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def conv(ctx: Context, node: Node) -> TensorInfo:
    x, w = ctx.info(node.args[0]), ctx.info(node.args[1])
    b = ctx.info(node.args[2]) if len(node.args) > 2 else None
    if w is None or w.param is None:
        raise ctx.fail("convolution whose weight is not a parameter")
    transposed, groups = _args(node)
    in_ids = channel_neurons(ctx, x, 1) if x.has_neurons else ctx.materialise_inputs(x, 1)
    shape = tuple(w.flat.shape)
    a, bdim, k = shape[0], shape[1], math.prod(shape[2:])
    if in_ids.numel() != (a if transposed else bdim * groups):
        raise ctx.fail(f"weight {w.param} of shape {shape} does not fit {in_ids.numel()} input channels")
    depth = ctx.depth(x)
    n_out = bdim * groups if transposed else a
    out = ctx.new_neurons(n_out, NodeType.HIDDEN, depth)
    first = torch.arange(a).view(a, 1, 1)
    second = torch.arange(bdim).view(1, bdim, 1)
    # without groups the weight's second axis is every channel: a row of ids broadcast over the
    # first axis, not an (a, bdim) table (its size is the weight's over the kernel's, and every
    # later reader of the block -- the soundness check, the layout -- would scan it)
    cols = second if groups == 1 else first // (a // groups) * bdim + second
    if transposed:  # weight (in, out / groups, *k)
        src, dst, etype = in_ids.view(a, 1, 1), out[cols], EdgeType.CONV_TRANSPOSE
    else:  # weight (out, in / groups, *k)
        src, dst, etype = in_ids[cols], out.view(a, 1, 1), EdgeType.CONV
    flat = None if whole(ctx, w) else w.flat.reshape(-1)
    pos = torch.arange(k).view(1, 1, k)
    ctx.builder.param_edges(w.param, src, dst, etype, pos, flat=flat, shape=(a, bdim, k))
    bias_edges(ctx, b, out, depth)
    if b is None:
        ctx.unbiased[ctx.node] = (out, 1)
    return ctx.neurons_along(out, ctx.shape(), 1)


@register_op("aten.im2col")
def im2col(ctx: Context, node: Node) -> TensorInfo:
    """``unfold``: each channel's values at every offset of a sliding window, column
    ``c * K + k`` holding channel ``c`` shifted by window offset ``k`` (ConvBERT's span-based
    dynamic convolution). Each offset is a selection of positions (``shape.selection_view``):
    channel ``c`` at offset ``k`` is a new neuron fed by ``c``'s, the edge naming the window and
    the offset, so a later product with per-offset weights (the dynamic kernel) cannot swap
    offsets; channels move together at every offset."""
    from ..context import nonneuron
    from ..tensor_info import channel_ids, fresh_pos
    from .common import varies
    from .shape import selection_view

    x = ctx.info(node.args[0])
    kernel, dilation, padding, stride = (tuple(int(v) for v in a) for a in node.args[1:5])
    shape = ctx.shape()
    if x is not None and x.param is not None:
        x = ctx.materialise(x)
    if x is None or not x.has_neurons:
        return nonneuron(shape, x)
    cdim = 1 if x.ids.dim() == 4 else 0
    if any(varies(x.ids, d) for d in range(x.ids.dim()) if d != cdim):
        raise ctx.fail("im2col of maps whose neurons change with the position")
    chans = channel_ids(x.ids, cdim)
    zero = torch.zeros((), dtype=torch.long).expand(chans.shape)
    window = math.prod(kernel)
    cols = [selection_view(ctx, x, TensorInfo(chans, zero), ("im2col", kernel, dilation, padding, stride, k)).ids
            for k in range(window)]
    ids = torch.stack(cols, 1).reshape(-1)
    view = [1] * len(shape)
    view[cdim] = ids.numel()
    return TensorInfo(ids.view(view).expand(shape), fresh_pos(shape, cdim))
