"""Nonlinearities: recorded on the neurons they act on (``node_act``)."""

from __future__ import annotations

import zlib
from dataclasses import replace

import torch
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, compact, distinct_ids
from ..vocab import Activation, EdgeType, NodeType
from .common import affine, lookup, pair
from .shape import VIEW_OPS

ACTIVATIONS = {
    "aten.relu": Activation.RELU, "aten.relu_": Activation.RELU,
    "aten.leaky_relu": Activation.LEAKY_RELU, "aten.leaky_relu_": Activation.LEAKY_RELU,
    "aten.gelu": Activation.GELU, "aten.gelu_": Activation.GELU,
    "aten.silu": Activation.SILU, "aten.silu_": Activation.SILU,
    "aten.tanh": Activation.TANH, "aten.tanh_": Activation.TANH,
    "aten.sigmoid": Activation.SIGMOID, "aten.sigmoid_": Activation.SIGMOID,
    "aten.softmax": Activation.SOFTMAX, "aten._softmax": Activation.SOFTMAX,
    "aten.log_softmax": Activation.SOFTMAX, "aten._log_softmax": Activation.SOFTMAX,
    "aten.elu": Activation.ELU, "aten.elu_": Activation.ELU, "aten.selu": Activation.ELU,
    "aten.celu": Activation.ELU, "aten.softplus": Activation.SOFTPLUS,
    "aten.hardswish": Activation.HARDSWISH, "aten.hardswish_": Activation.HARDSWISH,
    "aten.hardtanh": Activation.HARDTANH, "aten.hardtanh_": Activation.HARDTANH,
    "aten.relu6": Activation.HARDTANH, "aten.mish": Activation.MISH,
    "aten.hardsigmoid": Activation.OTHER, "aten.exp": Activation.EXP,
    "aten.log": Activation.LOG, "aten.pow": Activation.POW, "aten.sqrt": Activation.SQRT,
    "aten.rsqrt": Activation.RSQRT, "aten.abs": Activation.ABS, "aten.square": Activation.POW,
    "aten.erf": Activation.ERF, "aten.reciprocal": Activation.RECIPROCAL, "aten.sin": Activation.SIN,
    "aten.cos": Activation.COS, "aten.clamp": Activation.CLAMP, "aten.clamp_min": Activation.CLAMP,
    "aten.clamp_max": Activation.CLAMP, "aten.sign": Activation.SIGN, "aten.log1p": Activation.OTHER,
    "aten.expm1": Activation.OTHER, "aten.logsigmoid": Activation.OTHER, "aten.neg": Activation.NEG,
}


SOFTMAX_OPS = frozenset({"aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax"})


@register_op(*ACTIVATIONS)
def activation(ctx: Context, node: Node) -> TensorInfo:
    act = ACTIVATIONS[op_name(node.target)]
    x = ctx.info(node.args[0])
    if x is None:
        return nonneuron(ctx.shape())
    if x.param is not None:
        x = ctx.materialise(x)
    if not x.has_neurons:
        return nonneuron(ctx.shape(), x)
    ids = x.ids
    nodes = torch.unique(distinct_ids(ids))
    fresh = bool((ctx.builder.activation_of(nodes) == int(Activation.NONE)).all())
    variant = _variant(node)
    if fresh and not variant and _sole_use(node.args[0]):
        ctx.builder.set_activation(nodes, act)
        return TensorInfo(ids, x.pos, routes=x.routes)
    # the pre-activation value is used elsewhere too: the activated neurons are new nodes
    new = ctx.new_neurons(nodes.numel(), NodeType.ACTIVATION, ctx.depth(x))
    ctx.builder.edges(nodes, new, EdgeType.ACTIVATION, variant)
    ctx.builder.set_activation(new, act)
    new_ids = lookup(compact(ids), nodes, new, ctx.builder.num_nodes).expand(ids.shape)
    return TensorInfo(new_ids, x.pos, routes=x.routes)


def _variant(node: Node) -> int:
    """0 for an activation with its default arguments; else a code of its scalar arguments
    (slope, exponent, bounds, approximation), carried on the activation edge, so that
    ``x ** 2`` and ``y ** 3`` are not taken for each other. Softmax's axis is no variant."""
    if op_name(node.target) in SOFTMAX_OPS:
        return 0
    extra = [a for a in node.args[1:] if not isinstance(a, Node)] + sorted(
        (k, v) for k, v in node.kwargs.items() if not isinstance(v, Node))
    if not extra:
        return 0
    return zlib.crc32(repr(extra).encode()) % (2**31 - 1) + 1


def _sole_use(arg: Node) -> bool:
    """Whether this op is the only reader of its input's neurons, through views too: only then
    may the activation be recorded on those neurons themselves (``x[:, :4].relu()`` beside a
    plain use of ``x`` must not mark ``x``)."""
    for _ in range(16):
        if len(arg.users) != 1:
            return False
        if arg.op != "call_function" or op_name(arg.target) not in VIEW_OPS:
            return True
        inputs = arg.all_input_nodes
        if len(inputs) != 1:
            return False
        arg = inputs[0]
    return False


@register_op(
    "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.empty_like", "aten.rand_like",
    "aten.randn_like", "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.new_empty",
)
def creation(ctx: Context, node: Node) -> TensorInfo:
    return nonneuron(ctx.shape())


@register_op("aten._assert_tensor_metadata", "aten._assert_scalar", "aten.sym_constrain_range_for_size")
def assertion(ctx: Context, node: Node) -> None:
    """Checks of dtype, shape or range: no value."""
    return None


@register_op("aten.glu")
def glu(ctx: Context, node: Node) -> TensorInfo:
    """``glu(x, dim) = a * sigmoid(b)`` for the two halves of ``x`` along ``dim``: the gate half
    gets sigmoid nodes of its own, and each output neuron is the product of its two halves."""
    x = ctx.info(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    if x is not None and x.param is not None:
        x = ctx.materialise(x)
    if x is None or not x.has_neurons:
        return nonneuron(ctx.shape(), x)
    a, b = (x.map(lambda t, i=i: t.chunk(2, dim)[i]) for i in range(2))
    gates = torch.unique(b.ids[b.ids >= 0])
    sig = ctx.new_neurons(gates.numel(), NodeType.ACTIVATION, ctx.depth(b))
    ctx.builder.edges(gates, sig, EdgeType.ACTIVATION)
    ctx.builder.set_activation(sig, Activation.SIGMOID)
    gated = lookup(b.ids, gates, sig, ctx.builder.num_nodes)
    ids = pair(ctx, a.ids, gated, NodeType.PRODUCT, EdgeType.PRODUCT, ctx.depth(a) + 1, b_pos=1)
    return TensorInfo(ids, a.pos)


@register_op("aten.prelu", "aten._prelu_kernel")
def prelu(ctx: Context, node: Node) -> TensorInfo:
    """``prelu(x, a)``: a new neuron per neuron of ``x``, fed by an edge carrying its channel's
    slope (one slope shared by every channel: tied edges). PReLU is positively homogeneous,
    but a rescaled neuron would have to keep its slope edge unscaled, so no scale symmetry is
    claimed."""
    x, slope = ctx.info(node.args[0]), ctx.info(node.args[1])
    if slope is None or slope.param is None:
        raise ctx.fail("PReLU whose slope is not a parameter")
    shape = ctx.shape()
    view = [1] * len(shape)
    if slope.flat.numel() > 1:
        view[1 if len(shape) >= 2 else 0] = slope.flat.numel()
    slope = replace(slope, flat=slope.flat.reshape(view))
    out = affine(ctx, x, shape, slope, None, EdgeType.PRELU_SLOPE, EdgeType.BIAS)
    ctx.builder.set_activation(torch.unique(distinct_ids(out.ids)), Activation.PRELU)
    return out
