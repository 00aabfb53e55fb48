"""Products of two activations: attention scores (q . k) and their use on values.

A contraction ``a @ b`` makes one node per distinct (row of ``a``, column of ``b``) pair
of neuron sets: for ``q @ k^T`` one node per head (its scores), for ``scores @ v`` one per
(head, value channel). When both sides contract over neurons, ``CONTRACT_PAIR`` edges say
which query channel meets which key channel, so permuting channels inside a head is a
graph automorphism only when done to queries and keys alike.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import register_op
from ..tensor_info import TensorInfo, broadcast_axes, broadcast_shape, distinct_ids, narrow_axes, repeat_shadow
from ..vocab import Activation, EdgeType, NodeType
from .common import fibers_to_nodes
from .linear import matmul_with_parameter


def contract(ctx: Context, a: TensorInfo, b: TensorInfo, shape: tuple[int, ...]) -> TensorInfo:
    """``a @ b`` over the last axis of ``a`` and the second-to-last of ``b``.

    Rows of ``a`` that repeat by layout (every token of a sequence holds the same neurons)
    are looked at once, as are such columns of ``b``, leading axes where both repeat and the
    summed axis where both do (scores times values, summed over tokens): the cost follows the
    neurons, not the sequence length."""
    if not a.has_neurons and not b.has_neurons:
        return nonneuron(shape, a, b)
    lead = shape[:-2]
    m, k = a.ids.shape[-2:]
    n = b.ids.shape[-1]
    a_ids, b_ids = a.ids.broadcast_to(lead + (m, k)), b.ids.broadcast_to(lead + (k, n))
    both = broadcast_axes(lead, a_ids[..., 0, 0], b_ids[..., 0, 0])
    row_axis, col_axis = len(lead), len(lead) + 1
    a_ids = narrow_axes(a_ids, a_ids.shape, both + ([row_axis] if m > 1 and a_ids.stride(row_axis) == 0 else []))
    b_ids = narrow_axes(b_ids, b_ids.shape, both + ([col_axis] if n > 1 and b_ids.stride(col_axis) == 0 else []))
    if k > 1 and a_ids.stride(-1) == 0 and b_ids.stride(-2) == 0:  # one neuron pair over the whole sum
        a_ids, b_ids, k = a_ids.narrow(-1, 0, 1), b_ids.narrow(-2, 0, 1), 1
    lead, m, n = tuple(a_ids.shape[:-2]), a_ids.shape[-2], b_ids.shape[-1]
    small = lead + (m, n)
    rows = a_ids.reshape(-1, k)
    cols = b_ids.transpose(-1, -2).reshape(-1, k)
    zero = torch.zeros((), dtype=torch.long).expand(shape)
    if not a.has_neurons or not b.has_neurons:  # a constant mixing matrix: channels pass
        side, fibers = (b, cols) if b.has_neurons else (a, rows)
        if bool((fibers == fibers[:, :1]).all()):
            ids = fibers[:, 0].reshape(lead + ((n,) if side is b else (m,)))
        else:
            nodes, inverse = fibers_to_nodes(ctx, fibers, NodeType.SUM, EdgeType.RESIDUAL, ctx.depth(side))
            ids = nodes[inverse].reshape(lead + ((n,) if side is b else (m,)))
        ids = ids.unsqueeze(-2) if side is b else ids.unsqueeze(-1)
        return TensorInfo(ids.expand(small).expand(shape), zero)
    row_u, row_inv = torch.unique(rows, dim=0, return_inverse=True)
    col_u, col_inv = torch.unique(cols, dim=0, return_inverse=True)
    grid = row_inv.reshape(lead + (m, 1)) * col_u.shape[0] + col_inv.reshape(lead + (1, n))
    grid = grid.broadcast_to(small)
    pairs, inverse = torch.unique(grid.reshape(-1), return_inverse=True)
    r, c = row_u[pairs // col_u.shape[0]], col_u[pairs % col_u.shape[0]]
    mixing = bool((r != r[:, :1]).any()) and bool((c != c[:, :1]).any())
    ntype = NodeType.ATTENTION if mixing else NodeType.PRODUCT
    nodes = ctx.new_neurons(pairs.numel(), ntype, ctx.depth(a, b))
    _fan_in(ctx, r, nodes, EdgeType.MATMUL_LEFT)
    _fan_in(ctx, c, nodes, EdgeType.MATMUL_RIGHT)
    if mixing:
        both = torch.stack([r.reshape(-1), c.reshape(-1)])
        both = torch.unique(both[:, (both >= 0).all(0)], dim=1)
        ctx.builder.edges(both[0], both[1], EdgeType.CONTRACT_PAIR)
    ids = nodes[inverse].reshape(small).expand(shape)
    return TensorInfo(ids, zero)


def _fan_in(ctx: Context, sets: Tensor, nodes: Tensor, etype: EdgeType) -> None:
    src = sets.reshape(-1)
    dst = nodes.repeat_interleave(sets.shape[1])
    e = torch.unique(torch.stack([src, dst])[:, src >= 0], dim=1)
    ctx.builder.edges(e[0], e[1], etype)


@register_op("aten.matmul", "aten.bmm", "aten.mm")
def matmul(ctx: Context, node: Node) -> TensorInfo:
    done = matmul_with_parameter(ctx, node)
    if done is not None:
        return done
    a, b = ctx.info(node.args[0]), ctx.info(node.args[1])
    shape = ctx.shape()
    if a.ids.dim() == 1 or b.ids.dim() == 1:
        raise ctx.fail("matrix-vector product of activations")
    return contract(ctx, a, b, shape)


@register_op("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
             "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_efficient_attention",
             "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_attention_math")
def sdpa(ctx: Context, node: Node) -> TensorInfo | list:
    """Attention as one op: scores = contract(q, k), softmax at the head nodes, then values."""
    val = node.meta["val"]
    out = _attention(ctx, node)
    if isinstance(val, (tuple, list)):  # the fused kernels also return statistics
        return [out] + [nonneuron(tuple(v.shape)) if isinstance(v, torch.Tensor) else None for v in val[1:]]
    return out


def _attention(ctx: Context, node: Node) -> TensorInfo:
    q, k, v = (ctx.info(a) for a in node.args[:3])
    if k.ids.dim() >= 3 and k.ids.shape[-3] != q.ids.shape[-3]:  # grouped-query: kv heads are shared
        g = q.ids.shape[-3] // k.ids.shape[-3]
        k, v = (i.map(lambda t: repeat_shadow(t, g, -3)) for i in (k, v))
    qs, ks = q.ids.shape, k.ids.shape
    score_shape = broadcast_shape(qs[:-2], ks[:-2]) + (qs[-2], ks[-2])
    scores = contract(ctx, q, k.map(lambda t: t.transpose(-1, -2)), score_shape)
    heads = torch.unique(distinct_ids(scores.ids))
    ctx.builder.set_activation(heads, Activation.SOFTMAX)
    return contract(ctx, scores, v, tuple(q.ids.shape[:-1]) + (v.ids.shape[-1],))


@register_op("aten.baddbmm")
def baddbmm(ctx: Context, node: Node) -> TensorInfo:
    """``beta * input + alpha * (b1 @ b2)``. With a 3-D parameter ``b2``: one dense layer per
    block, ``input`` its bias (``linear.batched_dense``). Otherwise a contraction (Bloom's ALiBi
    scores: ``alibi.baddbmm(q, k^T)``) plus ``input``: neurons are summed; a tensor without
    neurons (ALiBi's per-head slopes times key positions, computed from the attention mask) is
    taken to differ along every axis where the scores' neurons do, so each head keeps its role
    (``POSITIONAL`` nodes), as a per-head constant does, and its channels still move.
    ``alpha`` and ``beta`` other than 1 code the result (``elementwise.with_number``)."""
    from .elementwise import _with_nonneuron, with_number
    from .linear import batched_dense

    inp, b1, b2 = (ctx.info(a) for a in node.args[:3])
    beta = node.kwargs.get("beta", node.args[3] if len(node.args) > 3 else 1)
    alpha = node.kwargs.get("alpha", node.args[4] if len(node.args) > 4 else 1)
    shape = ctx.shape()
    if b2 is not None and b2.param is not None and (b1 is None or b1.param is None) and b2.flat.dim() == 3:
        if inp is not None and inp.param is None and inp.has_neurons:
            raise ctx.fail("batched product plus neurons")
        out = batched_dense(ctx, b1, b2, inp if inp is not None and (inp.param is not None or inp.has_neurons)
                            else None)
        return with_number(ctx, "aten.mul", out, ("baddbmm", repr(alpha), repr(beta)))
    if any(i is not None and i.param is not None for i in (b1, b2)):
        raise ctx.fail("baddbmm with a parameter that is not a 3-D right factor")
    prod = with_number(ctx, "aten.mul", contract(ctx, b1, b2, shape), alpha)
    if inp is None or beta == 0:
        return prod
    if inp.param is not None:
        inp = ctx.materialise(inp)
    inp = with_number(ctx, "aten.mul", inp, beta)
    if not prod.has_neurons:
        return inp if inp.has_neurons else nonneuron(shape, inp, prod)
    if inp.has_neurons:
        from .common import pair
        ids = pair(ctx, inp.ids.broadcast_to(shape), prod.ids, NodeType.SUM, EdgeType.RESIDUAL, ctx.depth(inp, prod))
        return TensorInfo(ids, prod.pos.broadcast_to(shape))
    bias = TensorInfo(inp.ids, inp.pos, const=True, routes=inp.routes, taint=inp.taint)
    return _with_nonneuron(ctx, prod, bias, shape, ctx.tag(node.args[0]), ctx.const_value(node.args[0]), "aten.add")
