"""Reductions and pooling: channels survive reductions over other axes."""

from __future__ import annotations

from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, broadcast_ids, compact, fresh_pos
from ..vocab import EdgeType, NodeType
from .common import channel_neurons, fibers_to_nodes, varies
from .elementwise import where_like

REDUCTIONS = (
    "aten.sum", "aten.mean", "aten.amax", "aten.amin", "aten.max", "aten.min", "aten.var",
    "aten.std", "aten.logsumexp", "aten.norm", "aten.prod", "aten.linalg_vector_norm", "aten.var_mean", "aten.std_mean",
)
POOLING = (
    "aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.avg_pool1d",
    "aten.avg_pool2d", "aten.avg_pool3d", "aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d",
    "aten.adaptive_avg_pool3d", "aten._adaptive_avg_pool2d", "aten.adaptive_max_pool1d",
    "aten.adaptive_max_pool2d", "aten.max_pool2d_with_indices", "aten.max_pool1d_with_indices",
    "aten.max_pool3d_with_indices", "aten.upsample_nearest1d", "aten.upsample_nearest2d",
    "aten.upsample_bilinear2d", "aten.upsample_nearest3d", "aten.lp_pool2d", "aten.upsample_bicubic2d",
    "aten.upsample_linear1d", "aten.upsample_trilinear3d", "aten._upsample_bilinear2d_aa",
)


def _reduced_dims(node: Node, ndim: int) -> list[int]:
    name = op_name(node.target)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if name == "aten.linalg_vector_norm":
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if dims is None or dims == []:
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    if not all(isinstance(d, int) for d in dims):  # e.g. norm(p) with a scalar second arg
        return list(range(ndim))
    return sorted(d % ndim for d in dims)


@register_op(*REDUCTIONS)
def reduction(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    if len(node.args) > 1 and isinstance(node.args[1], Node):  # max(a, b), min(a, b): elementwise
        return where_like(ctx, ctx.info(node.args[0]), ctx.info(node.args[1]))
    x = ctx.info(node.args[0])
    val = node.meta["val"]
    multi = isinstance(val, (tuple, list))
    out_shape = tuple(val[0].shape) if multi else tuple(val.shape)
    info = _reduce(ctx, node, x, out_shape)
    return [info, nonneuron(tuple(val[1].shape), x)] if multi else info


@register_op("aten.argmax", "aten.argmin", "aten.any", "aten.all")
def argmax(ctx: Context, node: Node) -> TensorInfo:
    """Which channel wins is no statistic: permuting the channels changes it. The result has
    no neurons but remembers those it came from, so whatever uses it is checked."""
    return nonneuron(ctx.shape(), ctx.info(node.args[0]))


def _reduce(ctx: Context, node: Node, x: TensorInfo | None, out_shape) -> TensorInfo:
    if x is None or not x.has_neurons:
        return nonneuron(out_shape, x)
    ids, pos = x.ids, x.pos
    dims = _reduced_dims(node, ids.dim())
    mixed = [d for d in dims if varies(ids, d)]
    for d in dims:
        if d not in mixed:
            ids, pos = ids.narrow(d, 0, 1), pos.narrow(d, 0, 1)
    if not mixed:
        return TensorInfo(ids.reshape(out_shape), pos.reshape(out_shape))
    rest = [d for d in range(ids.dim()) if d not in mixed]
    kept = tuple(ids.shape[d] for d in rest)
    # one fibre per index of the kept axes; along broadcast ones (tokens) all fibres are one
    rows = compact(ids).permute(rest + mixed)  # the mixed axes vary, so they are never broadcasts
    small = rows.shape[: len(rest)]
    rows = rows.reshape(-1, rows[(0,) * len(rest)].numel())
    nodes, inverse = fibers_to_nodes(ctx, rows, NodeType.SUM, EdgeType.RESIDUAL, ctx.depth(x))
    pos = pos.permute(rest + mixed).reshape(*kept, -1)[..., 0]
    return TensorInfo(nodes[inverse].reshape(small).expand(kept).reshape(out_shape), pos.reshape(out_shape))



@register_op(*POOLING)
def pooling(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    """Spatial resampling keeps channels (axis 1) and renumbers positions."""
    x = ctx.info(node.args[0])
    val = node.meta["val"]
    multi = isinstance(val, (tuple, list))
    shape = tuple((val[0] if multi else val).shape)
    if x is not None and x.param is not None:  # a resampled parameter (interpolated position tables)
        x = ctx.materialise(x)
    if x is None or not x.has_neurons:
        info = nonneuron(shape, x)
    else:  # positions with neurons of their own (an interpolated table of constants) are merged
        info = TensorInfo(broadcast_ids(channel_neurons(ctx, x, 1), shape, 1), fresh_pos(shape, 1))
    return [info, nonneuron(tuple(val[1].shape), x)] if multi else info
