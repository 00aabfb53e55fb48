"""Dense layers: ``linear``, ``addmm`` and matrix products with a parameter."""

from __future__ import annotations

from dataclasses import replace

from torch.fx import Node

from ..context import Context
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo
from ..vocab import EdgeType, NodeType
from .common import bias_edges, dense_edges, pair, varies, whole


def _dense(ctx: Context, x: TensorInfo, w: TensorInfo, transposed: bool, bias, in_dim: int, out_dim: int):
    if x is not None and x.param is not None:  # a parameter fed to a layer (DeBERTa's relative embeddings)
        x = ctx.materialise(x)
    depth = ctx.depth(x)
    out = dense_edges(ctx, x, in_dim, w, transposed, EdgeType.LINEAR, depth)
    if bias is not None and bias.param is None and bias.has_neurons:
        # a bias with neurons (parameters concatenated, WavLM's ``cat(q_bias, k_bias, v_bias)``, or
        # activations): ``x W^T + b`` is the layer's outputs summed with ``b``'s neurons
        shape = ctx.shape()
        layer = ctx.neurons_along(out, shape, out_dim)
        ids = pair(ctx, layer.ids, bias.ids.broadcast_to(shape), NodeType.SUM, EdgeType.RESIDUAL,
                   ctx.depth(layer, bias))
        return TensorInfo(ids, layer.pos)
    bias_edges(ctx, bias, out, depth)
    if bias is None:
        ctx.unbiased[ctx.node] = (out, out_dim)
    return ctx.neurons_along(out, ctx.shape(), out_dim)


@register_op("aten.linear")
def linear(ctx: Context, node: Node) -> TensorInfo:
    x, w = ctx.info(node.args[0]), ctx.info(node.args[1])
    b = ctx.info(node.args[2]) if len(node.args) > 2 else None
    if w is None or w.param is None:
        raise ctx.fail("linear whose weight is not a parameter")
    return _dense(ctx, x, w, False, b, -1, -1)


@register_op("aten.addmm")
def addmm(ctx: Context, node: Node) -> TensorInfo:
    b, x, w = (ctx.info(a) for a in node.args[:3])
    if w is None or w.param is None:
        raise ctx.fail("addmm whose weight is not a parameter")
    return _dense(ctx, x, w, True, b, -1, -1)


def matmul_with_parameter(ctx: Context, node: Node) -> TensorInfo | None:
    """``x @ W`` or ``W @ x`` with a 2-D parameter ``W``; ``None`` when neither is one."""
    a, b = ctx.info(node.args[0]), ctx.info(node.args[1])
    if b is not None and b.param is not None and (a is None or a.param is None):
        if b.flat.dim() != 2:
            raise ctx.fail(f"matmul with a {b.flat.dim()}-D parameter {b.param}")
        return _dense(ctx, a, b, True, None, -1, -1)
    if a is not None and a.param is not None and (b is None or b.param is None):
        if a.flat.dim() != 2 or op_name(node.target) == "aten.bmm":
            raise ctx.fail(f"matmul with a {a.flat.dim()}-D parameter {a.param}")
        return _dense(ctx, b, a, False, None, -2, -2)
    return None


def batched_dense(ctx: Context, x: TensorInfo, w: TensorInfo, bias: TensorInfo | None) -> TensorInfo:
    """``x @ W (+ b)`` with a 3-D parameter ``W`` of shape ``(blocks, in, out)`` applied to
    ``x`` of shape ``(blocks, rows, in)``: one dense layer per block (RecurrentGemma's
    block-diagonal RG-LRU gates, ``baddbmm(b, x, W)``). Block ``k``'s input neurons are the
    neurons of ``x[k]``'s channels; each block gets ``out`` new neurons."""
    shape = ctx.shape()
    if w.flat.dim() != 3 or x is None or x.ids.dim() != 3:
        raise ctx.fail(f"batched product with a {w.flat.dim()}-D parameter {w.param}")
    blocks, n_in, n_out = w.flat.shape
    if not x.has_neurons:
        x = TensorInfo(ctx.materialise_inputs(x, -1).view(1, 1, -1).expand(x.ids.shape), x.pos)
    xb = x.ids.broadcast_to((blocks,) + tuple(x.ids.shape[1:]))
    if varies(xb, 1):
        raise ctx.fail("batched product whose rows hold different neurons")
    in_ids = xb[:, 0, :]  # (blocks, in)
    if bool((in_ids < 0).any()):
        raise ctx.fail("batched product of channels without neurons")
    depth = ctx.depth(x)
    out = ctx.new_neurons(blocks * n_out, NodeType.HIDDEN, depth).view(blocks, n_out)
    flat = None if whole(ctx, w) else w.flat.reshape(-1)
    ctx.builder.param_edges(w.param, in_ids.view(blocks, n_in, 1), out.view(blocks, 1, n_out), EdgeType.LINEAR,
                            flat=flat, shape=(blocks, n_in, n_out))
    if bias is not None and bias.param is not None:
        order = bias.flat.broadcast_to(shape)[:, 0, :].reshape(-1)
        bias_edges(ctx, replace(bias, flat=order), out.reshape(-1), depth)
    elif bias is not None and (bias.has_neurons or not bias.const):
        raise ctx.fail("batched product plus a tensor that is not a parameter")
    ids = out.view(blocks, 1, n_out).expand(shape)
    return TensorInfo(ids, x.pos.broadcast_to(x.ids.shape)[..., :1].expand(shape))
