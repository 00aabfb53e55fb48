"""Nonlinearities: recorded on the neurons they act on (``node_act``)."""

from __future__ import annotations

import torch
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo
from ..vocab import Activation, EdgeType, NodeType
from .common import lookup

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
    "aten.hardsigmoid": Activation.OTHER, "aten.exp": Activation.OTHER,
    "aten.log": Activation.OTHER, "aten.pow": Activation.OTHER, "aten.sqrt": Activation.OTHER,
    "aten.rsqrt": Activation.OTHER, "aten.abs": Activation.OTHER, "aten.square": Activation.OTHER,
    "aten.erf": Activation.OTHER, "aten.reciprocal": Activation.OTHER, "aten.sin": Activation.SIN,
    "aten.cos": Activation.OTHER, "aten.clamp": Activation.OTHER, "aten.clamp_min": Activation.OTHER,
    "aten.clamp_max": Activation.OTHER, "aten.sign": Activation.OTHER, "aten.log1p": Activation.OTHER,
    "aten.expm1": Activation.OTHER, "aten.logsigmoid": Activation.OTHER,
}


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
    nodes = torch.unique(ids[ids >= 0])
    fresh = bool((ctx.builder.activation_of(nodes) == int(Activation.NONE)).all())
    if fresh and len(node.args[0].users) == 1:
        ctx.builder.set_activation(nodes, act)
        return TensorInfo(ids, x.pos, routes=x.routes)
    # the pre-activation value is used elsewhere too: the activated neurons are new nodes
    new = ctx.new_neurons(nodes.numel(), NodeType.ACTIVATION, ctx.depth(x))
    ctx.builder.edges(nodes, new, EdgeType.ACTIVATION)
    ctx.builder.set_activation(new, act)
    return TensorInfo(lookup(ids, nodes, new, ctx.builder.num_nodes), x.pos, routes=x.routes)


@register_op(
    "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.empty_like", "aten.rand_like",
    "aten.randn_like", "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.new_empty",
)
def creation(ctx: Context, node: Node) -> TensorInfo:
    return nonneuron(ctx.shape())
