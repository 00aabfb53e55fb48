"""Shape ops: applied verbatim to the id/position shadows of their input."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.fx import Node

from ..context import Context, dependencies, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, channel_ids, compact, no_neurons, positions, repeat_shadow, reshape_shadow
from ..vocab import EdgeType, NodeType
from .common import fibers_to_nodes, lookup, varies

IDENTITY = (
    "aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.to", "aten._to_copy",
    "aten.type_as", "aten.lift_fresh_copy", "aten.dropout", "aten.feature_dropout",
    "aten.alpha_dropout", "aten.positive", "aten.dropout_", "aten.clone_",
)
SHAPE = (
    "aten.view", "aten._unsafe_view", "aten.reshape", "aten.permute", "aten.transpose",
    "aten.t", "aten.flatten", "aten.unflatten", "aten.unsqueeze", "aten.squeeze",
    "aten.expand", "aten.broadcast_to", "aten.slice", "aten.select", "aten.narrow", "aten.repeat", "aten.flip",
    "aten.roll", "aten.movedim", "aten.swapaxes", "aten.view_as", "aten.expand_as",
    "aten.repeat_interleave", "aten.unfold", "aten.diagonal", "aten.tile", "aten.reshape_as",
    "aten.numpy_T", "aten.mT", "aten.adjoint", "aten.pixel_shuffle", "aten.pixel_unshuffle",
    "aten.channel_shuffle", "aten.native_channel_shuffle",
)
#: Shape ops that only change how the elements are grouped into axes.
RESHAPES = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.view_as", "aten.reshape_as",
                      "aten.flatten", "aten.unflatten"})
#: Ops whose result is a view of their input's elements (no value changes).
VIEW_OPS = frozenset(IDENTITY + SHAPE)
SPLIT = ("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind", "aten.unsafe_split",
         "aten.tensor_split")


def _shape_fn(ctx: Context, node: Node):
    name = op_name(node.target)
    rest = list(node.args[1:])
    if name in RESHAPES:
        out = ctx.shape()
        return lambda t: reshape_shadow(t, out)
    dim = rest[1] if len(rest) > 1 else node.kwargs.get("dim")
    if name == "aten.repeat_interleave" and isinstance(rest[0], int) and isinstance(dim, int):
        return lambda t: repeat_shadow(t, rest[0], dim)
    if name == "aten.expand_as":
        other = ctx.shape(rest[0])
        return lambda t: t.expand(other)
    if any(isinstance(a, Node) or (isinstance(a, (list, tuple)) and any(isinstance(b, Node) for b in a))
           for a in rest):
        raise ctx.fail("shape op whose sizes are computed from tensor values (data-dependent sizes)")
    return lambda t: node.target(t, *rest, **node.kwargs)


@register_op(*IDENTITY)
def identity(ctx: Context, node: Node) -> TensorInfo | None:
    return ctx.info(node.args[0])


@register_op(*SHAPE)
def shape_op(ctx: Context, node: Node) -> TensorInfo:
    x = ctx.info(node.args[0])
    if x is None:
        return nonneuron(ctx.shape())
    out = x.map(_shape_fn(ctx, node))
    key = _selection_key(node, x)
    return selection_view(ctx, x, out, key) if key is not None else out


#: Edge positions of selection views start here (far from concatenation places and kernel offsets).
SELECTION_POS = 1 << 24


def selection_view(ctx: Context, x: TensorInfo, out: TensorInfo, key: object) -> TensorInfo:
    """``out``, part of the positions of ``x`` (a token, a slice, rows an index picked), as new
    neurons, one per neuron of ``out``, each fed by its neuron with an edge whose position names
    the selection.

    A neuron stands for its channel at every position. Without this, ``a(h[:, 0]) + b(h[:, 1])``
    is ``a(h) + b(h)`` in the graph, and swapping the look-alike heads ``a`` and ``b`` passes for
    a symmetry; so did swapping Switch Transformers' experts, each of which reads the tokens its
    router sent it. Equal selections get equal codes (the same tensor); a selection by an index
    computed from the inputs or from neurons (``key`` None) gets a code of its own: it may pick
    other rows on another input, so it is like no other."""
    if key is None or key[0] == "data":
        key = ("data", len(ctx.selections))
    code = ctx.selections.setdefault(key, len(ctx.selections) + 1)
    ids = compact(out.ids)
    src = torch.unique(ids[ids >= 0])
    if not src.numel():
        return out
    nodes = ctx.new_neurons(src.numel(), NodeType.MERGE, ctx.depth(x))
    ctx.builder.edges(src, nodes, EdgeType.MERGE, SELECTION_POS + code)
    return replace(out, ids=lookup(ids, src, nodes, ctx.builder.num_nodes).expand(out.ids.shape))


def _position_axis(x: TensorInfo, dim: int) -> bool:
    """Whether axis ``dim`` of a tensor with neurons holds positions (tokens, pixels, the batch):
    the same neurons all along it. (Shadows are broadcasts there, so which positions a tensor
    holds is not written anywhere else.)"""
    if x.param is not None or not x.has_neurons or x.ids.shape[dim] <= 1:
        return False
    return not varies(x.ids, dim)


def _selection_key(node: Node, x: TensorInfo) -> tuple | None:
    """A key naming the positions a slice/select/narrow takes along a position axis, or None
    when it takes all of them in order (or acts on channels, or ``x`` has no neurons)."""
    name = op_name(node.target)
    if name not in ("aten.slice", "aten.select", "aten.narrow") or x.param is not None or not x.has_neurons:
        return None
    args = list(node.args[1:])
    dim = (args[0] if args else node.kwargs.get("dim", 0)) % x.ids.dim()
    if not _position_axis(x, dim):
        return None
    size = x.ids.shape[dim]
    if name == "aten.select":
        return ("select", dim - x.ids.dim(), args[1] % size)
    if name == "aten.narrow":
        start, length = args[1] % size, args[2]
        return None if (start == 0 and length >= size) else ("slice", dim - x.ids.dim(), start, start + length, 1)
    start, end, step = (args + [None, None, None, 1])[1:4]
    start, end, step = slice(start, end, step).indices(size)
    if start == 0 and end >= size and step == 1:
        return None
    return ("slice", dim - x.ids.dim(), start, end, step)


@register_op(*SPLIT)
def split(ctx: Context, node: Node) -> list[TensorInfo]:
    x = ctx.info(node.args[0])
    if x is None or (x.param is None and not x.has_neurons):
        return [nonneuron(tuple(v.shape), x) for v in node.meta["val"]]
    fn = _shape_fn(ctx, node)
    parts = [fn(t) for t in (x.ids, x.pos)] + ([fn(x.flat)] if x.flat is not None else [])
    n = len(parts[0])
    out = [
        replace(x, ids=parts[0][i], pos=parts[1][i], flat=parts[2][i] if x.flat is not None else None)
        for i in range(n)
    ]
    dim = _split_dim(node) % x.ids.dim()
    if n <= 1 or not _position_axis(x, dim):
        return out
    # parts along a position axis are selections: each its own (by where it starts and ends)
    starts = torch.tensor([0] + [int(p.shape[dim]) for p in parts[0]]).cumsum(0).tolist()
    name = op_name(node.target)
    keys = [("select", dim - x.ids.dim(), i) if name == "aten.unbind"
            else ("slice", dim - x.ids.dim(), starts[i], starts[i + 1], 1) for i in range(n)]
    return [selection_view(ctx, x, part, key) for part, key in zip(out, keys)]


def _split_dim(node: Node) -> int:
    """The axis a split/chunk/unbind cuts (``unbind(x, dim=0)``, ``split(x, sizes, dim=0)``)."""
    if op_name(node.target) == "aten.unbind":
        return node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)


@register_op("aten.copy", "aten.copy_")
def copy(ctx: Context, node: Node) -> TensorInfo:
    """``dst.copy_(src)``: ``src``'s elements, broadcast to ``dst``'s shape (``dst``'s values are
    gone; the frontend writes the result back into the tensor ``dst`` is a view of)."""
    src, shape = ctx.info(node.args[1]), ctx.shape()
    if src is None:
        return nonneuron(shape)
    if src.param is not None:
        src = ctx.materialise(src)
    return replace(src, ids=src.ids.broadcast_to(shape), pos=src.pos.broadcast_to(shape))


#: Padding ops that copy the input's own elements into the border, and their mode
COPY_PADS = {f"aten.{kind}_pad{d}d": mode for kind, mode in (("reflection", "reflect"), ("replication", "replicate"))
             for d in (1, 2, 3)} | {"aten._pad_circular": "circular"}


@register_op("aten.constant_pad_nd", "aten.pad", *COPY_PADS)
def pad(ctx: Context, node: Node) -> TensorInfo:
    """A constant border holds no neuron (-1); a reflected, replicated or circular one holds
    copies of the elements it repeats, so the shadows are padded the same way."""
    x = ctx.info(node.args[0])
    if x is None or not x.has_neurons:
        return nonneuron(ctx.shape(), x)
    name = op_name(node.target)
    widths = list(node.args[1])
    mode = COPY_PADS.get(name) or (node.args[2] if name == "aten.pad" and len(node.args) > 2
                                   else node.kwargs.get("mode", "constant"))
    if mode == "constant":
        return replace(x, ids=F.pad(x.ids.contiguous(), widths, value=-1),
                       pos=F.pad(x.pos.contiguous(), widths, value=-1))

    def copy_pad(t):  # torch pads float tensors only in these modes; ids are exact in float64
        return F.pad(t.double().contiguous(), widths, mode=mode).long()
    return replace(x, ids=copy_pad(x.ids), pos=copy_pad(x.pos))


@register_op("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx: Context, node: Node) -> TensorInfo:
    shape = ctx.shape()
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(shape)
    infos = [ctx.info(a) for a in node.args[0]]
    if any(i is None for i in infos):
        raise ctx.fail("concatenation of an untracked tensor")
    if any(i.param is not None for i in infos) and (
        any(i.has_neurons for i in infos) or len({i.param for i in infos}) > 1
        or any(i.param is None and i.ids.numel() for i in infos)
    ):  # the concatenation axis is a position: parts of one table stay apart (BEiT's class rows)
        infos = [ctx.materialise(i, positional=(dim,)) for i in infos]
    # torch.cat skips legacy empty 1-D tensors (e.g. an empty key/value cache) of any rank
    infos = [i for i in infos if i.ids.numel() > 0 and i.ids.shape[dim] > 0]
    if not infos:
        return no_neurons(shape, const=True)
    if all(i.param is not None for i in infos) and len({i.param for i in infos}) == 1:
        return TensorInfo(
            torch.cat([i.ids for i in infos], dim), torch.cat([i.pos for i in infos], dim),
            param=infos[0].param, flat=torch.cat([i.flat for i in infos], dim),
        )
    with_neurons = [i for i in infos if i.has_neurons]
    merge = (
        dim != 0
        and len(with_neurons) > 1
        and max(i.ids.shape[dim] for i in infos) > 1
        and not any(varies(i.ids, dim) for i in with_neurons)
    )
    if not merge:
        taint = dependencies(*(i for i in infos if not i.has_neurons))
        return TensorInfo(
            _cat([i.ids for i in infos], dim), _cat([i.pos for i in infos], dim),
            const=all(i.const for i in infos), taint=taint if taint.numel() else None,
        )
    # tokens of different origin joined along a sequence axis share channels: merge them;
    # the edge's position is the part's place in the concatenation (a class token comes first)
    rows = torch.stack([i.ids.narrow(dim, 0, 1).broadcast_to(
        shape[:dim] + (1,) + shape[dim + 1:]).reshape(-1) for i in with_neurons], 1)
    nodes, inverse = fibers_to_nodes(ctx, rows, NodeType.MERGE, EdgeType.MERGE, ctx.depth(*with_neurons),
                                     ordered=True)
    ids = nodes[inverse].reshape(shape[:dim] + (1,) + shape[dim + 1:]).expand(shape)
    return TensorInfo(ids, positions(ids))


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat`` that keeps the axes along which every part is a broadcast (tokens, positions)
    a broadcast, instead of writing them out."""
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    axes = [d for d in range(len(shape)) if d != dim and shape[d] > 1 and all(p.stride(d) == 0 for p in parts)]
    for d in axes:
        parts = [p.narrow(d, 0, 1) for p in parts]
    return torch.cat(parts, dim).expand(shape)


@register_op("aten.stack")
def stack(ctx: Context, node: Node) -> TensorInfo:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    infos = [ctx.info(a) for a in node.args[0]]
    if any(i is None for i in infos):
        raise ctx.fail("stack of an untracked tensor")
    infos = [ctx.materialise(i) if i.param is not None else i for i in infos]
    return TensorInfo(
        torch.stack([i.ids for i in infos], dim), torch.stack([i.pos for i in infos], dim),
        const=all(i.const for i in infos),
    )


def _rows_by_tokens(ctx: Context, node: Node, name: str) -> bool:
    """Whether a parameter is indexed along its first axis only, by indices computed from the
    inputs (token ids), not by constants."""
    if name == "aten.index":
        indices = node.args[1]
        if len(indices) != 1 or indices[0] is None:
            return False
        idx = indices[0]
    elif name == "aten.index_select" and node.args[1] == 0:
        idx = node.args[2]
    else:
        return False
    info = ctx.info(idx)
    return not (info is not None and info.const and ctx.const_value(idx) is not None)


@register_op("aten.index", "aten.index_select", "aten.gather")
def index(ctx: Context, node: Node) -> TensorInfo:
    """Indexing by tensors: exact where the indexed axes carry no channel structure."""
    from .embedding import lookup_rows

    x = ctx.info(node.args[0])
    name = op_name(node.target)
    if x is not None and x.param is not None:
        if _rows_by_tokens(ctx, node, name):
            return lookup_rows(ctx, x)  # ``table[ids]``: an embedding
        # indexed along other axes, or by constants (attention-bias tables): the scalars become
        # neurons, positional along the indexed axes, and the gather is applied to them below
        dims = ([d for d, i in enumerate(node.args[1]) if i is not None] if name == "aten.index"
                else [node.args[1] % x.flat.dim()])
        x = ctx.materialise(x, positional=tuple(dims))
    if x is None or not x.has_neurons:
        return nonneuron(ctx.shape(), x)
    if name == "aten.index":
        dims = [d for d, i in enumerate(node.args[1]) if i is not None]
        real = [None if i is None else ctx.const_value(i) for i in node.args[1]]
        known = all(r is not None for r, i in zip(real, node.args[1]) if i is not None)
        zeros = [None if i is None else torch.zeros(ctx.shape(i), dtype=torch.long) for i in node.args[1]]
        fn = lambda t, idx=(real if known else zeros): torch.ops.aten.index.Tensor(t, idx)  # noqa: E731
    else:
        dim = node.args[1] % x.ids.dim()
        dims = [dim]
        real = ctx.const_value(node.args[2])
        known = real is not None
        zeros = real if known else torch.zeros(ctx.shape(node.args[2]), dtype=torch.long)
        fn = lambda t: node.target(t, dim, zeros)  # noqa: E731
    across = [d for d in dims if varies(x.ids, d)]
    if not known and across:
        return _chosen_among(ctx, node, x, across)
    # constant indices (relative-position tables) are applied to the shadows as they are
    out = x.map(fn)
    picked = [d for d in dims if _position_axis(x, d)]
    if not picked:
        return out
    if not known:  # rows picked by an index computed from the inputs or from neurons
        return selection_view(ctx, x, out, None)
    whole = [r is None or (r.dim() == 1 and r.numel() == x.ids.shape[d] and torch.equal(r, torch.arange(r.numel())))
             for d, r in zip(dims, real if name == "aten.index" else [real])]
    if all(whole):
        return out
    key = ("index", name, tuple(d - x.ids.dim() for d in dims),
           tuple(tuple(r.reshape(-1).tolist()) + tuple(r.shape) for r in (real if name == "aten.index" else [real])
                 if r is not None))
    return selection_view(ctx, x, out, key)


def _chosen_among(ctx: Context, node: Node, x: TensorInfo, across: list[int]) -> TensorInfo:
    """``scores.gather(1, topk_indices)``: values picked among the neurons of one axis by an index
    computed from data. Like top-k's values, they are no neuron's, and remember the neurons they
    were chosen among (``routes``), so a scatter back over that axis ties them to those neurons."""
    dim = across[0]
    if len(across) > 1 or any(varies(x.ids, d) for d in range(x.ids.dim()) if d != dim):
        raise ctx.fail("data-dependent gather across neurons of several axes; register a module rule "
                       "for this module")
    index_args = node.args[1] if op_name(node.target) == "aten.index" else [node.args[2]]
    index = [ctx.info(a) for a in index_args if isinstance(a, Node)]
    return replace(nonneuron(ctx.shape(), x, *index), routes=channel_ids(x.ids, dim))
