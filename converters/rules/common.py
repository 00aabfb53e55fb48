"""Vectorised building blocks shared by the rules."""

from __future__ import annotations

import torch
from torch import Tensor

from ..context import Context
from ..tensor_info import (
    TensorInfo,
    broadcast_axes,
    broadcast_shape,
    channel_ids,
    compact,
    first_occurrence,
    narrow_axes,
)
from ..vocab import EdgeType, NodeType


def channel_neurons(ctx: Context, x: TensorInfo, dim: int) -> Tensor:
    """One node per index along ``dim`` for a layer that reads every position of it.

    Usually each channel is one neuron at every position (``channel_ids``). Where a channel
    holds different neurons at different positions (attention outputs after a per-position
    bias, a table of constants), taking one of them would silently drop the rest: instead a
    ``MERGE`` node per channel is fed by each of them, the position on the edge.
    """
    dim %= x.ids.dim()
    if not any(varies(x.ids, d) for d in range(x.ids.dim()) if d != dim):
        return channel_ids(x.ids, dim)
    rows = x.ids.movedim(dim, 0).reshape(x.ids.shape[dim], -1)
    pos = x.pos.broadcast_to(x.ids.shape).movedim(dim, 0).reshape(rows.shape)
    # the edge says where the element sits (its column) and what position it holds: a tensor
    # whose neurons run along a non-channel axis (input time steps transposed into a conv's
    # channel axis) has channels that differ only in ``pos``, and must not be interchangeable
    place = torch.arange(rows.shape[1]).expand_as(rows) * (int(pos.max()) + 1) + pos
    key = torch.stack([torch.arange(rows.shape[0]).view(-1, 1).expand_as(rows), rows, place]).reshape(3, -1)
    key = key[:, key[1] >= 0]
    # one edge per distinct (channel, neuron, place)
    key = torch.unique(key, dim=1)
    out = ctx.new_neurons(rows.shape[0], NodeType.MERGE, ctx.depth(x))
    ctx.builder.edges(key[1], out[key[0]], EdgeType.MERGE, key[2])
    return out


def channel_pos(info: TensorInfo, dim: int) -> Tensor:
    """Position of each index along ``dim`` relative to the first: the spatial position when
    maps were flattened into this axis, 0 everywhere for an ordinary feature axis."""
    n = info.pos.shape[dim]
    row = info.pos.movedim(dim, -1).reshape(-1, n)[0]
    return (row - row.min()).clamp(min=0) if n else row


def whole(ctx: Context, info: TensorInfo) -> bool:
    """Whether ``info`` is its parameter, unsliced and in its own layout."""
    return _same_view(info.flat, ctx.whole_flat.get(info.param))


def _same_view(a: Tensor | None, b: Tensor | None) -> bool:
    """The same elements of the same buffer in the same layout (a cheap identity test)."""
    return (a is not None and b is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape
            and a.stride() == b.stride())


def varies(ids: Tensor, dim: int) -> bool:
    """Whether ``ids`` holds different neurons along ``dim``."""
    if ids.shape[dim] <= 1 or ids.stride(dim) == 0:
        return False
    ids = compact(ids)
    return bool((ids != ids.narrow(dim, 0, 1)).any())


def lookup(ids: Tensor, old: Tensor, new: Tensor, size: int) -> Tensor:
    """Replace node ids ``old[i]`` by ``new[i]`` in ``ids`` (others become -1)."""
    table = torch.full((size + 1,), -1, dtype=torch.long)
    table[old] = new
    return table[ids.clamp(min=-1)]  # -1 indexes the trailing -1


def pair(
    ctx: Context,
    a: Tensor,
    b: Tensor,
    ntype: NodeType,
    etype: EdgeType,
    depth: int,
    b_pos: int = 0,
) -> Tensor:
    """One new node per distinct (a, b) pair of node ids; edges a -> node and b -> node."""
    shape = broadcast_shape(a.shape, b.shape)
    axes = broadcast_axes(shape, a, b)  # computed once where both repeat, then expanded
    a, b = narrow_axes(a, shape, axes), narrow_axes(b, shape, axes)
    small = a.shape
    a, b = a.reshape(-1), b.reshape(-1)
    m = ctx.builder.num_nodes + 1
    uniq, inverse = torch.unique((a + 1) * m + (b + 1), return_inverse=True)
    ua, ub = uniq // m - 1, uniq % m - 1
    nodes = ctx.new_neurons(uniq.numel(), ntype, depth)
    ctx.builder.edges(ua[ua >= 0], nodes[ua >= 0], etype)
    ctx.builder.edges(ub[ub >= 0], nodes[ub >= 0], etype, b_pos)
    return nodes[inverse].reshape(small).expand(shape)


def fibers_to_nodes(ctx: Context, rows: Tensor, ntype: NodeType, etype: EdgeType, depth: int,
                    ordered: bool = False):
    """One node per distinct row of ids (a set of neurons combined into one). ``ordered``:
    the columns are not interchangeable (parts of a concatenation), each edge carries its column."""
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    nodes = ctx.new_neurons(uniq.shape[0], ntype, depth)
    src = uniq.reshape(-1)
    dst = nodes.repeat_interleave(uniq.shape[1])
    pos = torch.arange(uniq.shape[1]).repeat(uniq.shape[0]) if ordered else torch.zeros_like(src)
    edges = torch.unique(torch.stack([src, dst, pos])[:, src >= 0], dim=1)
    ctx.builder.edges(edges[0], edges[1], etype, edges[2] if ordered else 0)
    return nodes, inverse


def dense_edges(
    ctx: Context,
    x: TensorInfo,
    in_dim: int,
    weight: TensorInfo,
    transposed: bool,
    etype: EdgeType,
    depth: int,
) -> Tensor:
    """A dense map: new output neurons, one edge per weight scalar.

    ``weight.flat`` is laid out ``(out, in)``, or ``(in, out)`` when ``transposed``.
    """
    w = weight.flat.t() if transposed else weight.flat
    n_out, n_in = w.shape
    full = ctx.whole_flat.get(weight.param)
    if _same_view(w, full):  # (out, in) is the parameter's own layout
        transposed, is_whole = False, True
    elif _same_view(w.t(), full):  # the parameter is stored (in, out)
        transposed, is_whole = True, True
    else:
        is_whole = False
    in_ids = channel_neurons(ctx, x, in_dim) if x.has_neurons else ctx.materialise_inputs(x, in_dim)
    if in_ids.numel() != n_in:
        raise ctx.fail(f"weight {weight.param} expects {n_in} inputs, the tensor has {in_ids.numel()}")
    in_pos = channel_pos(x, in_dim)
    out = ctx.new_neurons(n_out, NodeType.HIDDEN, depth)
    if not is_whole:
        ctx.builder.param_edges(weight.param, in_ids.view(1, n_in), out.view(n_out, 1), etype,
                                in_pos.view(1, n_in), flat=w.expand(n_out, n_in).reshape(-1), shape=(n_out, n_in))
    elif transposed:  # the parameter's own layout is (in, out)
        ctx.builder.param_edges(weight.param, in_ids.view(n_in, 1), out.view(1, n_out), etype, in_pos.view(n_in, 1))
    else:
        ctx.builder.param_edges(weight.param, in_ids.view(1, n_in), out.view(n_out, 1), etype, in_pos.view(1, n_in))
    return out


def bias_edges(ctx: Context, bias: TensorInfo | None, out: Tensor, depth: int, etype=EdgeType.BIAS,
               pos: int = 0) -> None:
    """Edges from a new bias node into ``out``, one per scalar of ``bias``; ``pos`` tells two
    biases of one layer apart (a recurrent layer's ``bias_ih`` and ``bias_hh``)."""
    if bias is None or (bias.param is None and not bias.has_neurons):
        return  # no bias, or a constant one (ONNX files spell "no bias" as zeros): no parameters
    if bias.param is None:
        raise ctx.fail("bias computed from activations")
    node = ctx.new_neurons(1, NodeType.BIAS, max(depth - 1, 0))
    flat = None if whole(ctx, bias) else bias.flat.reshape(-1)
    ctx.builder.param_edges(bias.param, node, out, etype, pos, flat=flat)


def affine(
    ctx: Context,
    x: TensorInfo,
    shape: tuple[int, ...],
    weight: TensorInfo | None,
    bias: TensorInfo | None,
    weight_type: EdgeType,
    bias_type: EdgeType,
) -> TensorInfo:
    """``x * weight + bias`` with broadcast parameters: a new neuron per neuron of ``x``.

    Each parameter scalar becomes the edge into the neuron where it first acts; further
    neurons it also acts on get tied edges (a scalar gain shared by all channels). Along
    axes where neither the neurons nor the parameters change by layout (spatial positions,
    tokens), the first occurrence is at index 0: only that index is looked at.
    """
    if not x.has_neurons:
        x = ctx.materialise(x)
    params = [p for p in (weight, bias) if p is not None]
    axes = broadcast_axes(shape, x.ids, *(p.flat for p in params))
    ids = narrow_axes(x.ids, shape, axes)
    small = ids.shape
    ids = ids.reshape(-1)
    pos = narrow_axes(x.pos, shape, axes).reshape(-1)
    valid = ids >= 0
    uniq, inverse = torch.unique(ids[valid], return_inverse=True)
    depth = ctx.depth(x)
    out = ctx.new_neurons(uniq.numel(), NodeType.HIDDEN, depth)
    out_ids = torch.full_like(ids, -1)
    out_ids[valid] = out[inverse]
    if weight is None:
        ctx.builder.edges(uniq, out, EdgeType.RESIDUAL)
    for p, etype in ((weight, weight_type), (bias, bias_type)):
        if p is None:
            continue
        flat = narrow_axes(p.flat, shape, axes).reshape(-1)[valid]
        m = ctx.builder.num_nodes + 1
        key = flat * m + ids[valid]
        _, _, first = first_occurrence(key)
        idx = valid.nonzero().squeeze(1)[first]
        src = ids[idx] if p is weight else ctx.new_neurons(1, NodeType.BIAS, max(depth - 1, 0)).expand(idx.numel())
        ctx.builder.param_edges(p.param, src, out_ids[idx], etype, pos[idx], flat=flat[first])
    return TensorInfo(ids=out_ids.reshape(small).expand(shape), pos=x.pos.broadcast_to(shape))
