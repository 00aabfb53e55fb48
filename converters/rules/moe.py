"""Mixture-of-experts: routing (top-k over router neurons) and fused expert tensors.

Top-k over router neurons yields tensors that are no neuron's but remember the router
neurons they chose from (``routes``); scattering them back over the expert axis, or a
module rule for fused experts, ties each expert to its router neuron. Permuting experts
together with their router rows is then a graph automorphism.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from torch.fx import Node

from ..context import Context, nonneuron
from ..registry import register_module, register_op
from ..tensor_info import TensorInfo, broadcast_ids, channel_ids, fresh_pos
from ..vocab import Activation, EdgeType, NodeType
from .common import pair, varies


@register_op("aten.topk", "aten.sort", "aten.argsort")
def topk(ctx: Context, node: Node) -> TensorInfo | list[TensorInfo]:
    x = ctx.info(node.args[0])
    val = node.meta["val"]
    shapes = [tuple(v.shape) for v in val] if isinstance(val, (tuple, list)) else [tuple(val.shape)]
    dim = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], int) else node.kwargs.get("dim", -1)
    routes = None
    if x is not None and x.has_neurons and varies(x.ids, dim % x.ids.dim()):
        routes = channel_ids(x.ids, dim)
    infos = [replace(nonneuron(s, x), routes=routes) for s in shapes]
    return infos if isinstance(val, (tuple, list)) else infos[0]


@register_op("aten.scatter", "aten.scatter_", "aten.scatter_add", "aten.scatter_add_")
def scatter(ctx: Context, node: Node) -> TensorInfo:
    """Values chosen among router neurons, written back along the expert axis."""
    base, dim = ctx.info(node.args[0]), node.args[1]
    src = ctx.info(node.args[3]) if len(node.args) > 3 else None
    shape = ctx.shape()
    routes = next((i.routes for i in (src, ctx.info(node.args[2])) if i is not None and i.routes is not None), None)
    if routes is not None and routes.numel() == shape[dim]:
        return TensorInfo(broadcast_ids(routes, shape, dim % len(shape)), fresh_pos(shape, dim))
    return base if base is not None and base.has_neurons else nonneuron(shape, base, src)


def _has_fused_experts(module: torch.nn.Module) -> bool:
    params = dict(module.named_parameters(recurse=False))
    return (
        "gate_up_proj" in params and "down_proj" in params
        and params["gate_up_proj"].dim() == 3 and params["down_proj"].dim() == 3
    )


_ACTS = {"silu": Activation.SILU, "swish": Activation.SILU, "gelu": Activation.GELU, "relu": Activation.RELU}


@register_module(_has_fused_experts)
def fused_experts(ctx: Context, module: torch.nn.Module, path: str, inputs: list[Node], output: Node):
    """Experts stored as fused 3-D tensors: ``gate_up_proj (E, 2I, D)`` and ``down_proj (E, D, I)``
    (Mixtral), or, where transformers marks the module ``is_transposed`` / ``has_bias`` /
    ``is_concatenated=False`` (gpt-oss), ``(E, D, 2I)`` and ``(E, I, D)`` with biases
    ``(E, 2I)``, ``(E, D)`` and gate and up columns interleaved.

    Expert ``e``: ``down_e(act(gate_e x) * up_e x)``, weighted by router neuron ``e`` and
    summed over experts.
    """
    infos = [ctx.info(n) for n in inputs]
    hidden = next((i for i in infos if i is not None and i.has_neurons), None)
    routed = next((i for i in infos if i is not None and i.routes is not None), None)
    # routing weights that do not say which router neuron chose which expert (PhiMoE's sparsemixer
    # masks and re-normalises its scores): the neurons they were computed from are pinned, and so is
    # each expert's output (experts stay; their units still move inside each expert)
    # (one without taint depends only on inputs and pinned neurons: the check pinned what it lost)
    tainted = next((i for i in infos if i is not None and not i.has_neurons and i.param is None), None)
    if hidden is None or (routed is None and tainted is None):
        raise ctx.fail(f"fused experts {path}: cannot find hidden states and router weights")
    if getattr(module, "has_post_expert_norm", False) or not getattr(module, "has_gate", True):
        raise ctx.fail(f"fused experts {path}: only gated experts without a norm after each expert have a rule")
    transposed = bool(getattr(module, "is_transposed", False))
    gate_up, down = f"{path}.gate_up_proj", f"{path}.down_proj"
    shape = tuple(ctx.param_tensor(gate_up).shape)
    n_exp, two_i, d = (shape[0], shape[2], shape[1]) if transposed else shape
    x = channel_ids(hidden.ids, -1)
    if x.numel() != d:
        raise ctx.fail(f"fused experts {path}: gate_up_proj of shape {shape} does not fit {x.numel()} hidden channels")
    inter = two_i // 2
    depth = ctx.depth(hidden)
    gu = ctx.new_neurons(n_exp * two_i, NodeType.HIDDEN, depth)
    if transposed:
        ctx.builder.param_edges(gate_up, x.view(1, d, 1), gu.view(n_exp, 1, two_i), EdgeType.LINEAR)
    else:
        ctx.builder.param_edges(gate_up, x.view(1, 1, d), gu.view(n_exp, two_i, 1), EdgeType.LINEAR)
    _expert_bias(ctx, module, f"{gate_up}_bias", gu, depth)
    if getattr(module, "is_concatenated", True):
        gate, up = gu.view(n_exp, 2, inter).unbind(1)
    else:  # columns gate_0, up_0, gate_1, up_1, ...
        gate, up = gu.view(n_exp, inter, 2).unbind(2)
    act_fn = getattr(module, "act_fn", None)  # absent when the module came from an ONNX file
    act = _ACTS.get(type(act_fn).__name__.lower().replace("activation", ""), Activation.OTHER)
    ctx.builder.set_activation(gate.reshape(-1), act)
    mid = pair(ctx, gate, up, NodeType.PRODUCT, EdgeType.PRODUCT, depth + 1)  # (E, I)
    y = ctx.new_neurons(n_exp * d, NodeType.HIDDEN, depth + 2)
    if transposed:
        ctx.builder.param_edges(down, mid.view(n_exp, inter, 1), y.view(n_exp, 1, d), EdgeType.LINEAR)
    else:
        ctx.builder.param_edges(down, mid.view(n_exp, 1, inter), y.view(n_exp, d, 1), EdgeType.LINEAR)
    _expert_bias(ctx, module, f"{down}_bias", y, depth + 2)
    if routed is None:
        reason = f"fused experts {path}: routing weights without routes"
        reads = [i.taint.reshape(-1) for i in infos if i is not None and not i.has_neurons and i.taint is not None]
        ctx.builder.pin(torch.cat(reads + [y.reshape(-1)]), reason)
        weighted = y.view(n_exp, d)
    else:
        weighted = pair(ctx, routed.routes.view(n_exp, 1), y.view(n_exp, d), NodeType.PRODUCT,
                        EdgeType.PRODUCT, depth + 3)
    out = ctx.new_neurons(d, NodeType.SUM, depth + 4)
    ctx.builder.edges(weighted.reshape(-1), out.repeat(n_exp), EdgeType.RESIDUAL)
    return ctx.neurons_along(out, ctx.shape(output), -1)


def _expert_bias(ctx: Context, module: torch.nn.Module, name: str, nodes: Tensor, depth: int) -> None:
    """Bias ``(E, n)`` of fused experts, one edge per scalar into ``nodes`` (in the same order)."""
    if not getattr(module, "has_bias", False):
        return
    if name not in ctx.builder.params:
        raise ctx.fail(f"fused experts marked has_bias without parameter {name}")
    source = ctx.new_neurons(1, NodeType.BIAS, max(depth - 1, 0))
    ctx.builder.param_edges(name, source, nodes.reshape(-1), EdgeType.BIAS)
