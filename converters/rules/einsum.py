"""``einsum`` of one or two operands, through the shape shadows.

The equation is lowered to what the other rules already know: each operand is permuted to
(batch, free, contracted) letters and flattened, the product is a dense layer when one side is a
parameter (``dense_edges``) or a contraction of two activations (``attention.contract``), and
the result is unflattened and permuted into the output's letter order. Forms outside that (an
ellipsis, a letter summed within one operand) are left to the generic path, which refuses
parameters and pins the neurons involved. Three or more operands of activations are folded into
products of two, left to right (``_chain``).
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


def _chain(equation: str, n: int) -> list[str] | None:
    """``n`` operands as ``n - 1`` products of two, left to right (Performer-style linear attention:
    ``bnd,bne,bme->bmd`` is ``(q^T k)`` then its product with ``v``): each intermediate keeps the
    letters a later operand or the output names. Einsum is exact arithmetic on sums of products,
    so the order changes no value beyond rounding."""
    if "..." in equation or "->" not in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    ops = inputs.split(",")
    if len(ops) != n or n < 3:
        return None
    steps, cur = [], ops[0]
    for i in range(1, n):
        later = "".join(ops[i + 1:]) + out
        joined = "".join(dict.fromkeys(cur + ops[i]))
        res = out if i == n - 1 else "".join(c for c in joined if c in later)
        steps.append(f"{cur},{ops[i]}->{res}")
        cur = res
    return steps if all(_parse(s) is not None for s in steps) else None


@register_op("aten.einsum")
def einsum(ctx: Context, node: Node) -> TensorInfo:
    equation, operands = node.args[0], node.args[1]
    infos = [ctx.info(o) for o in operands]
    if len(infos) > 2 and all(i is not None and i.param is None for i in infos):
        steps = _chain(equation, len(infos))
        if steps is not None:
            sizes = {c: s for letters, op in zip(equation.replace(" ", "").split("->")[0].split(","), operands)
                     for c, s in zip(letters, ctx.shape(op))}
            cur = infos[0]
            for step, y in zip(steps, infos[1:]):
                res = step.split("->")[1]
                cur = _two(ctx, step, cur, y, sizes, tuple(sizes[c] for c in res))
            return cur
    parsed = _parse(equation) if len(infos) == 2 and all(i is not None for i in infos) else None
    if parsed is None:
        return unknown_op(ctx, node, "aten.einsum")
    a, b = parsed[:2]
    sizes = {c: s for letters, op in ((a, operands[0]), (b, operands[1])) for c, s in zip(letters, ctx.shape(op))}
    if infos[0].param is not None and infos[1].param is not None:
        return unknown_op(ctx, node, "aten.einsum")
    return _two(ctx, equation, infos[0], infos[1], sizes, ctx.shape())


def _two(ctx: Context, equation: str, x: TensorInfo, y: TensorInfo, sizes: dict, shape: tuple) -> TensorInfo:
    """One product of two operands (``equation`` parsed by ``_parse``) with result ``shape``."""
    a, b, out, batch, contracted, free_a, free_b = _parse(equation)
    if x.param is not None or y.param is not None:
        (p, pl, pfree), (v, vl, vfree) = ((x, a, free_a), (y, b, free_b)) if x.param is not None else \
            ((y, b, free_b), (x, a, free_a))
        if any(c in pl for c in batch):
            return unknown_op(ctx, ctx.node, "aten.einsum")  # a per-batch parameter is no dense layer
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
