"""``einsum`` of one or two operands, through the shape shadows.

The equation is lowered to what the other rules already know: each operand is permuted to
(batch, free, contracted) letters and flattened, the product is a dense layer when one side is a
parameter (``dense_edges``) or a contraction of two activations (``attention.contract``), and
the result is unflattened and permuted into the output's letter order. Forms outside that (an
ellipsis, a letter summed within one operand, three operands) are left to the generic path,
which refuses parameters and pins the neurons involved.
"""

from __future__ import annotations

from torch.fx import Node

from ..context import Context
from ..registry import register_op
from ..soundness import unknown_op
from ..tensor_info import TensorInfo
from ..vocab import EdgeType
from .attention import contract
from .common import dense_edges


def _parse(equation: str):
    if "..." in equation or "->" not in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    ops = inputs.split(",")
    if len(ops) != 2 or any(len(set(o)) != len(o) for o in ops + [out]):
        return None
    a, b = ops
    if any(c not in b and c not in out for c in a) or any(c not in a and c not in out for c in b):
        return None  # summed within one operand
    batch = [c for c in out if c in a and c in b]
    contracted = [c for c in a if c in b and c not in out]
    free_a = [c for c in out if c in a and c not in b]
    free_b = [c for c in out if c in b and c not in a]
    return a, b, out, batch, contracted, free_a, free_b


def _arrange(info: TensorInfo, letters: str, order: list[str], groups: list[int]) -> TensorInfo:
    """Permute ``info``'s axes into ``order`` and flatten consecutive groups of sizes ``groups``."""
    perm = [letters.index(c) for c in order]

    def fn(t):
        t = t.permute(perm)
        shape, at = [], 0
        for g in groups:
            size = 1
            for s in t.shape[at:at + g]:
                size *= s
            shape.append(size)
            at += g
        return t.reshape(shape)

    return info.map(fn)


@register_op("aten.einsum")
def einsum(ctx: Context, node: Node) -> TensorInfo:
    equation, operands = node.args[0], node.args[1]
    infos = [ctx.info(o) for o in operands]
    parsed = _parse(equation) if len(infos) == 2 and all(i is not None for i in infos) else None
    if parsed is None:
        return unknown_op(ctx, node, "aten.einsum")
    a, b, out, batch, contracted, free_a, free_b = parsed
    x, y = infos
    sizes = {c: s for letters, op in ((a, operands[0]), (b, operands[1])) for c, s in zip(letters, ctx.shape(op))}
    shape = ctx.shape()
    if x.param is not None and y.param is not None:
        return unknown_op(ctx, node, "aten.einsum")
    if x.param is not None or y.param is not None:
        (p, pl, pfree), (v, vl, vfree) = ((x, a, free_a), (y, b, free_b)) if x.param is not None else \
            ((y, b, free_b), (x, a, free_a))
        if any(c in pl for c in batch):
            return unknown_op(ctx, node, "aten.einsum")  # a per-batch parameter is no dense layer
        v = _arrange(v, vl, batch + vfree + contracted, [1] * len(batch + vfree) + [len(contracted)])
        w = _arrange(p, pl, pfree + contracted, [len(pfree), len(contracted)])  # (out, in)
        outs = dense_edges(ctx, v, -1, w, False, EdgeType.LINEAR, ctx.depth(v))
        flat = tuple(sizes[c] for c in batch + vfree) + (outs.numel(),)
        result = ctx.neurons_along(outs, flat, -1)
        result_letters = batch + vfree + pfree
    else:
        lhs = _arrange(x, a, batch + free_a + contracted, [1] * len(batch) + [len(free_a), len(contracted)])
        rhs = _arrange(y, b, batch + contracted + free_b, [1] * len(batch) + [len(contracted), len(free_b)])
        flat = tuple(sizes[c] for c in batch) + (lhs.ids.shape[-2], rhs.ids.shape[-1])
        result = contract(ctx, lhs, rhs, flat)
        result_letters = batch + free_a + free_b
    unflat = tuple(sizes[c] for c in result_letters)
    perm = [result_letters.index(c) for c in out]
    return result.map(lambda t: t.reshape(unflat).permute(perm).reshape(shape))
