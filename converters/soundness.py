"""Soundness: the graph may only claim symmetries the model has.

The graph's automorphisms are taken as the model's symmetries, so every way one neuron's
value reaches another must be in the graph. A rule that reads a tensor and leaves no trace
of it (an attention mask it ignores, a mask or an index computed from neurons, an op
without a rule that mixes channels in ways nobody wrote down) would let a permutation move
neurons whose roles differ. After every op, :func:`check_op` asks of each argument whose
values depend on neurons whether the op's result or the edges the rule added mention any
of those neurons; when none do, the argument's neurons and the op's result neurons are
*pinned*: they get an index of their own, so no automorphism moves them. A pinned neuron
keeps its value under every symmetry that is left (by induction over the ops), so what the
rule dropped cannot change: conservative, and correct.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Node

from .context import Context, dependencies, mentioned, nonneuron
from .registry import op_name
from .rules.shape import VIEW_OPS
from .tensor_info import TensorInfo

#: Ops whose result does not depend on their arguments' values.
VALUE_FREE = frozenset({
    "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.empty_like", "aten.rand_like",
    "aten.randn_like", "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.new_empty",
    "aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten._assert_tensor_metadata",
    "aten.scalar_tensor", "aten.arange", "aten.size", "aten.dim",
})


#: Ops whose argument at these positions is read for its shape or dtype only.
SHAPE_ONLY_ARGS = {"aten.type_as": {1}, "aten.view_as": {1}, "aten.expand_as": {1}, "aten.reshape_as": {1},
                   "aten.copy": {0}, "aten.copy_": {0}}  # copy: the destination's values are overwritten


def tensor_args(ctx: Context, node: Node) -> list[TensorInfo]:
    """Infos of every tensor argument of ``node`` whose values it reads (positional, in lists,
    keyword)."""
    skip = SHAPE_ONLY_ARGS.get(op_name(node.target), set())
    args = [a for i, a in enumerate(node.args) if i not in skip] + list(node.kwargs.values())
    flat = [a for a in args if isinstance(a, Node)]
    flat += [x for a in args if isinstance(a, (list, tuple)) for x in a if isinstance(x, Node)]
    return [i for i in (ctx.info(a) for a in flat) if i is not None]


def _outputs(out) -> list[TensorInfo]:
    items = out if isinstance(out, (list, tuple)) else [out]
    return [i for i in items if isinstance(i, TensorInfo)]


def check_op(ctx: Context, name: str, args: list[TensorInfo], out, first_block: int) -> None:
    """Pin what the op's rule dropped (see the module docstring)."""
    if name in VALUE_FREE:
        return
    _check_parameters(ctx, name, args, out, first_block)
    # membership tests and a scatter: the sets matter, not their order or repeats
    needs = [d for d in (mentioned(a) for a in args) if d.numel()]
    outputs = _outputs(out)
    if not needs or (outputs and all(o.ids.numel() == 0 for o in outputs)):
        return  # nothing read, or an empty result (a slice past the end): nothing can differ
    seen = torch.zeros(ctx.builder.num_nodes + 1, dtype=torch.bool)
    results = mentioned(*outputs)
    seen[results] = True
    for block in ctx.builder.blocks[first_block:]:
        seen[block.src.reshape(-1)] = True
    dropped = [d for d in needs if not bool(seen[d].any())]
    if name in VIEW_OPS and not results.numel():
        return  # a view of elements without neurons (a slice beside the written ones) reads none
    if not dropped:
        return
    where = ctx.path() or "<top level>"
    reason = f"{name} in {where}: its result does not say how it depends on some of its inputs"
    ctx.builder.pin(torch.cat(dropped + [results]), reason)


def _check_parameters(ctx: Context, name: str, args: list[TensorInfo], out, first_block: int) -> None:
    """A parameter read by an op must become edges or stay a view of itself: never vanish."""
    used = {i.param for i in args if i.param is not None}
    if not used:
        return
    kept = {i.param for i in _outputs(out) if i.param is not None}
    added = {id(b) for b in ctx.builder.blocks[first_block:]}
    for param in sorted(used - kept):
        if not any(id(b) in added for b in ctx.builder.uses(param)):
            raise ctx.fail(f"the rule for {name} drops parameter {param!r}; register a rule that makes "
                           f"its edges with @converters.register_op({name!r})")


def unknown_op(ctx: Context, node: Node, name: str):
    """An op no rule describes. One that reads a parameter, or changes the shape of neurons, is
    refused. One that keeps its input's shape passes its neurons on, pinned: it may still mix
    channels (an FFT over the hidden axis)."""
    infos = tensor_args(ctx, node)
    for info in infos:
        if info.param is not None:
            raise ctx.fail(
                f"no rule for op {name!r} using parameter {info.param!r}; register one with "
                f"@converters.register_op({name!r}) (see converters/rules/ for examples)"
            )
    val = node.meta.get("val")
    if not isinstance(val, (Tensor, tuple, list)):
        return None
    if isinstance(val, (tuple, list)):
        return [nonneuron(tuple(v.shape), *infos) if isinstance(v, Tensor) else None for v in val]
    shape = tuple(val.shape)
    neurons = [i for i in infos if i.has_neurons]
    if not neurons:
        return nonneuron(shape, *infos)
    if tuple(neurons[0].ids.shape) == shape:
        reason = f"{name} in {ctx.path() or '<top level>'}: no rule says how it mixes channels"
        ctx.builder.pin(dependencies(*infos), reason)
        return neurons[0]
    raise ctx.fail(f"no rule for op {name!r} on neurons; register one with @converters.register_op({name!r})")


__all__ = ["VALUE_FREE", "check_op", "tensor_args", "unknown_op"]
