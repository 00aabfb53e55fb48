"""Elementwise binary ops: residual sums, gating products, parameter scales and shifts."""

from __future__ import annotations

import math
import zlib

import torch
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, broadcast_axes, compact, distinct_ids, narrow_axes, positions
from ..vocab import EdgeType, NodeType
from .common import affine, bias_edges, channel_neurons, lookup, pair, varies
from .shape import VIEW_OPS

ADDITIVE = ("aten.add", "aten.add_", "aten.sub", "aten.sub_", "aten.rsub")
MULTIPLICATIVE = ("aten.mul", "aten.mul_", "aten.multiply", "aten.multiply_", "aten.div", "aten.div_")
ORDERED = ("aten.sub", "aten.sub_", "aten.rsub", "aten.div", "aten.div_")


@register_op(*ADDITIVE, *MULTIPLICATIVE)
def binary(ctx: Context, node: Node) -> TensorInfo:
    name = op_name(node.target)
    shape = ctx.shape()
    a, b = ctx.info(node.args[0]), ctx.info(node.args[1])
    if a is None or b is None:  # with a Python number
        x = a if a is not None else b
        if x is None:
            return nonneuron(shape)
        number = node.args[1] if a is not None else node.args[0]
        return with_number(ctx, name, x, number, first=a is not None)
    additive = name in ADDITIVE
    if a.param is not None and b.param is not None:
        a = ctx.materialise(a)
    if a.param is not None or b.param is not None:
        p, x = (a, b) if a.param is not None else (b, a)
        if not x.has_neurons:
            return _with_nonneuron(ctx, ctx.materialise(p), x, shape, 0)
        if name in ("aten.add", "aten.add_"):
            x_node = node.args[1] if a.param is not None else node.args[0]
            layer = _layer_without_bias(ctx, x_node, x, p, shape)
            if layer is not None:  # x @ W + b is a linear layer with a bias
                out, _ = ctx.unbiased.pop(layer)
                index = torch.full((ctx.builder.num_nodes,), -1, dtype=torch.long)
                index[out] = torch.arange(out.numel())
                ids, flat = _compact_pair(x.ids, p.flat, shape)
                order = torch.zeros(out.numel(), dtype=torch.long).scatter_(0, index[ids], flat)
                bias_edges(ctx, TensorInfo(p.ids, p.pos, param=p.param, flat=order), out,
                           ctx.builder.depth_of(out))
                return x
        if additive:
            return affine(ctx, x, shape, None, p, EdgeType.SCALE, EdgeType.SHIFT)
        return affine(ctx, x, shape, p, None, EdgeType.SCALE, EdgeType.SHIFT)
    if a.has_neurons and b.has_neurons:
        ntype, etype = (NodeType.SUM, EdgeType.RESIDUAL) if additive else (NodeType.PRODUCT, EdgeType.PRODUCT)
        ids = pair(ctx, a.ids, b.ids, ntype, etype, ctx.depth(a, b), b_pos=int(name in ORDERED))
        return TensorInfo(ids, a.pos.broadcast_to(shape))
    if a.has_neurons or b.has_neurons:
        x, c = (a, b) if a.has_neurons else (b, a)
        const_node = node.args[1] if a.has_neurons else node.args[0]
        return _with_nonneuron(ctx, x, c, shape, ctx.tag(const_node), ctx.const_value(const_node),
                               name=name, first=a.has_neurons)
    return nonneuron(shape, a, b)


def _identity(name: str, number, first: bool) -> bool:
    """Whether ``x op number`` is ``x`` (adding 0, multiplying or dividing by 1)."""
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return False
    if name in ("aten.add", "aten.add_") or (first and name in ("aten.sub", "aten.sub_")):
        return number == 0
    if name in MULTIPLICATIVE[:4] or (first and name in ("aten.div", "aten.div_")):
        return number == 1
    return False


def _is_scaling(name: str, number: object, first: bool) -> bool:
    """Whether ``x op number`` is ``x`` times a finite number: linear, so it keeps the sign
    flips of odd and the rescalings of positively homogeneous activations applied after it
    (``sin(30 x)``, SIREN's layers), which :mod:`gmn.weightspace.symmetry` reads off the edge type."""
    if isinstance(number, bool) or not isinstance(number, float) or not math.isfinite(number):
        return False
    return name in ("aten.mul", "aten.multiply") or (first and name == "aten.div" and number != 0)


def with_number(ctx: Context, name: str, x: TensorInfo, code: object, first: bool = True) -> TensorInfo:
    """``x op c`` for one number ``c`` (a Python number, or a constant tensor holding one value).

    The result is not ``x``: ``a(2 * h) + b(h)`` with ``a(h) + b(h)``'s graph let ``a`` and ``b``
    swap (the outputs changed by 0.23). Neurons get new ``ACTIVATION`` nodes whose edge position
    codes the op, the number and its side (a ``SCALED`` edge where the op multiplies by the
    number, an ``ACTIVATION`` edge otherwise); a parameter becomes a computed weight
    (``rules.weight_norm.computed``); adding 0 or multiplying by 1 changes nothing."""
    if _identity(name, code, first):
        return x
    if isinstance(code, (int, float)) and not isinstance(code, bool):
        code = float(code)  # one code for 2, 2.0 and an ONNX file's float32 2.0; never two numbers in one
    key = (name.removesuffix("_"), repr(code), first)
    if x.param is not None:
        from .weight_norm import computed  # a function of each scalar of the parameter
        return computed(ctx, x, ("elementwise",) + key, None)
    if not x.has_neurons:
        return x
    variant = zlib.crc32(repr(key).encode()) % (2**31 - 1) + 1
    nodes = torch.unique(distinct_ids(x.ids))
    new = ctx.new_neurons(nodes.numel(), NodeType.ACTIVATION, ctx.depth(x))
    etype = EdgeType.SCALED if _is_scaling(key[0], code, first) else EdgeType.ACTIVATION
    ctx.builder.edges(nodes, new, etype, variant)
    ids = lookup(compact(x.ids), nodes, new, ctx.builder.num_nodes).expand(x.ids.shape)
    return TensorInfo(ids, x.pos, routes=x.routes)


def _layer_without_bias(ctx: Context, x_node, x: TensorInfo, p: TensorInfo, shape: tuple[int, ...]):
    """The dense/conv op whose output ``x`` is (through views nothing else reads), when it
    has no bias and ``p`` adds exactly one scalar per output neuron: that is its bias."""
    layer = x_node
    for _ in range(8):
        if len(layer.users) != 1:
            return None
        if layer in ctx.unbiased:
            break
        inputs = layer.all_input_nodes
        if len(inputs) != 1 or op_name(layer.target) not in VIEW_OPS:
            return None
        layer = inputs[0]
    else:
        return None
    if layer not in ctx.unbiased or p.flat.numel() != ctx.unbiased[layer][0].numel():
        return None
    out = ctx.unbiased[layer][0]
    ids, flat = _compact_pair(x.ids, p.flat, shape)
    if tuple(x.ids.shape) != shape or bool((ids < 0).any()) or not bool(torch.isin(ids, out).all()):
        return None
    # one parameter scalar per neuron, the same wherever the neuron appears
    first = torch.full((ctx.builder.num_nodes,), -1, dtype=torch.long).scatter_(0, ids, flat)
    if not bool((first[ids] == flat).all()) or torch.unique(flat).numel() != out.numel():
        return None
    return layer


def _compact_pair(ids: torch.Tensor, flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Neuron ids and parameter indices broadcast to ``shape``, flattened, without the axes
    along which both repeat by layout (tokens, positions)."""
    axes = broadcast_axes(shape, ids, flat)
    return narrow_axes(ids, shape, axes).reshape(-1), narrow_axes(flat, shape, axes).reshape(-1)


def _with_nonneuron(ctx: Context, x: TensorInfo, c: TensorInfo, shape: tuple[int, ...], tag: int,
                    value: torch.Tensor | None = None, name: str | None = None, first: bool = True) -> TensorInfo:
    """Neurons combined with a tensor that is no neuron's.

    A statistic of the input (a norm's variance, routing weights) leaves the neurons as
    they are. A constant that differs between channels (rotary tables) fixes each
    channel's role: new neurons whose edges carry the channel position and which
    constant it was (``tag``: rotary cos and sin tables must not be interchangeable).
    A constant whose known ``value`` repeats along an axis (a fill of one number) commutes
    with any permutation along it: that axis's channels stay interchangeable.
    """
    xb = x.ids.broadcast_to(shape)
    cshape = (1,) * (len(shape) - c.ids.dim()) + tuple(c.ids.shape)
    if value is not None and value.dim() == c.ids.dim():
        value = value.reshape(cshape)
    fixed = [d for d in range(len(shape)) if cshape[d] > 1 and varies(xb, d)
             and (value is None or value.shape != cshape or _differs(value, d))]
    if c.const and not fixed and name is not None:
        x = TensorInfo(xb, x.pos.broadcast_to(shape), routes=x.routes)
        # a constant the same on every channel (a scale held in a tensor, a mask over tokens) still
        # changes the neurons: coded like a Python number, by its value where it is known
        if value is not None and value.numel() and bool((value == value.reshape(-1)[0]).all()):
            return with_number(ctx, name, x, value.reshape(-1)[0].item(), first)
        # by which constant it is (a causal mask's values change with the input's length; the graph must not)
        return with_number(ctx, name, x, ("constant", tag), first)
    if not c.const or not fixed:
        return TensorInfo(xb, x.pos.broadcast_to(shape), routes=x.routes)
    sizes = [shape[d] if d in fixed else 1 for d in range(len(shape))]
    n = 1
    for s in sizes:
        n *= s
    axes = broadcast_axes(shape, xb)  # the fixed axes are not among them: neurons vary there
    small = narrow_axes(xb, shape, axes).shape
    channel = narrow_axes(torch.arange(n).reshape(sizes), shape, axes).reshape(-1)
    flat = narrow_axes(xb, shape, axes).reshape(-1)
    m = n + 1
    uniq, inverse = torch.unique((flat + 1) * m + channel, return_inverse=True)
    src, where = uniq // m - 1, uniq % m
    nodes = ctx.new_neurons(uniq.numel(), NodeType.POSITIONAL, ctx.depth(x))
    keep = src >= 0
    ctx.builder.edges(src[keep], nodes[keep], EdgeType.POSITIONAL, where[keep] + tag * m)
    return TensorInfo(nodes[inverse].reshape(small).expand(shape), x.pos.broadcast_to(shape))


def _differs(value: torch.Tensor, dim: int) -> bool:
    """Whether ``value`` holds different numbers along ``dim`` (NaN differs from everything)."""
    first = value.narrow(dim, 0, 1)
    return not bool((value == first).all())


PREDICATES = (
    "aten.eq", "aten.ne", "aten.gt", "aten.lt", "aten.ge", "aten.le", "aten.logical_and",
    "aten.logical_or", "aten.logical_not", "aten.logical_xor", "aten.isnan", "aten.isinf",
    "aten.isfinite", "aten.nonzero", "aten.argwhere", "aten.bitwise_and", "aten.bitwise_or",
    "aten.bitwise_not",
)


@register_op(*PREDICATES)
def predicate(ctx: Context, node: Node) -> TensorInfo:
    """Masks and indices computed from activations carry no neurons."""
    return nonneuron(ctx.shape(), *(ctx.info(a) for a in node.args))


@register_op("aten.where")
def where(ctx: Context, node: Node) -> TensorInfo:
    """``where(cond, a, b)``: each element comes from one of two tensors. The two are not
    interchangeable (the mask picks ``a``): ``b``'s edges carry position 1."""
    return where_like(ctx, *(ctx.info(x) for x in node.args[1:3]), ordered=True)


@register_op("aten.maximum", "aten.minimum", "aten.fmax", "aten.fmin")
def extreme(ctx: Context, node: Node) -> TensorInfo:
    """``maximum(a, b)``: symmetric in its two arguments."""
    return where_like(ctx, ctx.info(node.args[0]), ctx.info(node.args[1]))


def where_like(ctx: Context, a: TensorInfo | None, b: TensorInfo | None, ordered: bool = False) -> TensorInfo:
    """Each element of the result is an element of ``a`` or of ``b`` (``where``, ``maximum``)."""
    shape = ctx.shape()
    a = ctx.materialise(a) if a is not None and a.param is not None else a
    b = ctx.materialise(b) if b is not None and b.param is not None else b
    if a is not None and b is not None and a.has_neurons and b.has_neurons:
        ids = pair(ctx, a.ids, b.ids, NodeType.SUM, EdgeType.RESIDUAL, ctx.depth(a, b), b_pos=int(ordered))
        return TensorInfo(ids, a.pos.broadcast_to(shape))
    x = next((i for i in (a, b) if i is not None and i.has_neurons), None)
    if x is None:
        return nonneuron(shape, a, b)
    return TensorInfo(x.ids.broadcast_to(shape), x.pos.broadcast_to(shape))


@register_op("aten.index_add", "aten.index_add_")
def index_add(ctx: Context, node: Node) -> TensorInfo:
    """Rows of ``source`` added into ``self`` at indices along ``dim`` (expert dispatch)."""
    base, dim, source = ctx.info(node.args[0]), node.args[1], ctx.info(node.args[3])
    shape = ctx.shape()
    if source is None or not source.has_neurons:
        return base if base is not None else nonneuron(shape)
    dim %= source.ids.dim()
    if varies(source.ids, dim):
        # rows of different neurons (JetMoE's attention experts, each expert's rows in turn): each
        # place along the other axes gets a MERGE node fed by every neuron its rows hold, the
        # row's place on the edge (``channel_neurons``); which row lands where is the index's, so
        # an index computed from neurons pins them (the soundness check)
        merged = source.map(lambda t: t.movedim(dim, -1).reshape(-1, t.shape[dim]).t())
        nodes = channel_neurons(ctx, merged, 1)
        other = [s for d, s in enumerate(source.ids.shape) if d != dim]
        ids = nodes.reshape(other).unsqueeze(dim).expand(shape)
        rows = TensorInfo(ids, positions(ids))
    else:
        rows = source.map(lambda t: t.narrow(dim, 0, 1).expand(shape))
    if base is None or not base.has_neurons:
        return rows
    ids = pair(ctx, base.ids.broadcast_to(shape), rows.ids, NodeType.SUM, EdgeType.RESIDUAL, ctx.depth(base, rows))
    return TensorInfo(ids, base.pos.broadcast_to(shape))


@register_op("aten.masked_fill", "aten.masked_fill_")
def masked_fill(ctx: Context, node: Node) -> TensorInfo:
    """Elements replaced by a constant where a mask is set: channels stay. A mask computed from
    neurons is not recorded here, so the soundness check pins its neurons."""
    x = ctx.info(node.args[0])
    shape = ctx.shape()
    if x is None:
        return nonneuron(shape)
    if x.param is not None:
        x = ctx.materialise(x)
    if not x.has_neurons:
        return nonneuron(shape, x, ctx.info(node.args[1]))
    return TensorInfo(x.ids.broadcast_to(shape), x.pos.broadcast_to(shape), routes=x.routes)
