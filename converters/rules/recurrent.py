"""Recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (any depth, bidirectional,
LSTM projections), as the fused ``aten.lstm`` / ``aten.gru`` / ``aten.rnn_*`` ops.

Each layer and direction unrolls to one cell whose nodes stand for all time steps (as a
convolution's channels stand for all positions):

- one gate node per row of ``weight_ih`` (``G * H`` of them: LSTM ``i, f, g, o``; GRU
  ``r, z, n``; RNN one), fed by ``weight_ih`` from the layer's input channels, by
  ``bias_ih`` (``edge_pos`` 0) and ``bias_hh`` (``edge_pos`` 1) from two bias nodes, and by
  ``weight_hh`` from the hidden state nodes (``RECURRENT`` edges, which close a cycle;
  ``edge_pos`` 1 in the reverse direction, which reads time backwards: the two directions
  are never swapped);
- the state of hidden unit ``j``, a node fed by that unit's gates, each edge carrying its
  gate's number: LSTM ``c_j = f c_j + i g`` (a self-loop for the carry) and
  ``m_j = o tanh(c_j)``, projected by ``weight_hr`` when ``proj_size > 0``; GRU
  ``h_j = (1 - z) n + z h_j`` with ``r_j -> n_j`` for the reset gate's product.

A hidden-unit permutation then moves the unit's rows in every gate of ``weight_ih``,
``weight_hh`` and both biases, its column of ``weight_hh`` and of the next layer's
``weight_ih``, together: the recurrence's symmetry. Gates of one unit are never swapped
(edge positions tell them apart), nor the two biases (GRU's ``b_hn`` sits inside the reset
product, so they are not interchangeable).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Node

from ..context import Context
from ..registry import op_name, register_op
from ..tensor_info import TensorInfo, broadcast_ids, fresh_pos
from ..vocab import Activation, EdgeType, NodeType
from .common import bias_edges, channel_neurons, channel_pos, whole

S, T = Activation.SIGMOID, Activation.TANH
#: activation of each gate, in the order of ``weight_ih``'s row blocks
GATES = {"aten.lstm": (S, S, T, S), "aten.gru": (S, S, T), "aten.rnn_tanh": (T,), "aten.rnn_relu": (Activation.RELU,)}


def _weight(ctx: Context, w: TensorInfo, src: Tensor, dst: Tensor, etype: EdgeType, pos: Tensor | int = 0) -> None:
    """Edges for a 2-D weight laid out ``(rows, columns)``: ``src`` per column, ``dst`` per row."""
    rows, cols = w.flat.shape
    flat = None if whole(ctx, w) else w.flat.reshape(-1)
    ctx.builder.param_edges(w.param, src.view(1, cols), dst.view(rows, 1), etype, pos, flat=flat, shape=(rows, cols))


def _unit_edges(ctx: Context, parts: list[Tensor], dst: Tensor) -> None:
    """``parts[k][j] -> dst[j]`` for every unit ``j``, ``edge_pos`` ``k``."""
    for k, part in enumerate(parts):
        ctx.builder.edges(part, dst, EdgeType.PRODUCT, k)


def _cell(ctx: Context, kind: str, weights: list[TensorInfo], has_biases: bool, in_ids: Tensor,
          in_pos: Tensor, depth: int, direction: int, h0: Tensor | None,
          c0: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Nodes of one layer and direction; returns its hidden state nodes (and LSTM's cells)."""
    acts = GATES[kind]
    w_ih, w_hh = weights[0], weights[1]
    rest = weights[2:]
    biases, proj = (rest[:2], rest[2:]) if has_biases else ([], rest)
    rows = w_ih.flat.shape[0]
    hidden = rows // len(acts)
    gates = ctx.new_neurons(rows, NodeType.HIDDEN, depth)
    for k, act in enumerate(acts):
        ctx.builder.set_activation(gates[k * hidden:(k + 1) * hidden], act)
    if in_ids.numel() != w_ih.flat.shape[1]:
        raise ctx.fail(f"weight {w_ih.param} expects {w_ih.flat.shape[1]} inputs, the tensor has {in_ids.numel()}")
    _weight(ctx, w_ih, in_ids, gates, EdgeType.LINEAR, in_pos.view(1, -1))
    for k, b in enumerate(biases):
        bias_edges(ctx, b, gates, depth, pos=k)
    gate = list(gates.view(len(acts), hidden))
    cells = None
    if kind == "aten.lstm":
        cells = ctx.new_neurons(hidden, NodeType.PRODUCT, depth + 1)
        _unit_edges(ctx, [gate[0], gate[1], gate[2]], cells)
        ctx.builder.edges(cells, cells, EdgeType.RESIDUAL)  # c_t = f c_{t-1} + ...
        state = ctx.new_neurons(hidden, NodeType.PRODUCT, depth + 2)
        _unit_edges(ctx, [cells, gate[3]], state)
        if proj:
            projected = ctx.new_neurons(proj[0].flat.shape[0], NodeType.HIDDEN, depth + 3)
            _weight(ctx, proj[0], state, projected, EdgeType.LINEAR)
            state = projected
    elif kind == "aten.gru":
        ctx.builder.edges(gate[0], gate[2], EdgeType.PRODUCT, 1)  # n = tanh(... + r * (W_hn h + b_hn))
        state = ctx.new_neurons(hidden, NodeType.PRODUCT, depth + 1)
        _unit_edges(ctx, [gate[1], gate[2]], state)
        ctx.builder.edges(state, state, EdgeType.RESIDUAL)  # h_t = ... + z h_{t-1}
    else:
        state = gates
    _weight(ctx, w_hh, state, gates, EdgeType.RECURRENT, direction)
    for initial, node in ((h0, state), (c0, cells)):
        if initial is not None:  # an initial state computed by the model (an encoder's last state)
            ctx.builder.edges(initial, node, EdgeType.RESIDUAL, 1)
    return state, cells


def _initial(ctx: Context, arg, layers: int) -> list[Tensor | None]:
    """Per layer and direction, the neurons of an initial state, or ``None`` (zeros, constants)."""
    info = ctx.info(arg)
    if info is None or not info.has_neurons:
        return [None] * layers
    if info.ids.dim() == 2:  # unbatched: (layers, hidden)
        info = info.map(lambda t: t.unsqueeze(1))
    return [channel_neurons(ctx, info.map(lambda t, i=i: t[i]), -1) for i in range(layers)]


@register_op(*GATES)
def recurrent(ctx: Context, node: Node) -> list[TensorInfo]:
    kind = op_name(node.target)
    if node.target._overloadname != "input":
        raise ctx.fail(f"{kind} on a packed sequence; run the layer on a padded batch to convert it")
    x_arg, hx, params, has_biases, layers, _dropout, _train, bidirectional, _batch_first = node.args
    weights = [ctx.info(p) for p in params]
    if any(w is None or w.param is None for w in weights):
        raise ctx.fail(f"{kind} whose weights are not parameters")
    dirs = 2 if bidirectional else 1
    per = len(weights) // (layers * dirs)
    x = ctx.info(x_arg)
    if x.param is not None:
        x = ctx.materialise(x)
    in_ids = channel_neurons(ctx, x, -1) if x.has_neurons else ctx.materialise_inputs(x, -1)
    in_pos = channel_pos(x, -1)
    depth = ctx.depth(x)
    hx = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    h0 = _initial(ctx, hx[0], layers * dirs)
    c0 = _initial(ctx, hx[1], layers * dirs) if len(hx) > 1 else [None] * (layers * dirs)
    finals, cells = [], []
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            i = layer * dirs + d
            state, cell = _cell(ctx, kind, weights[i * per:(i + 1) * per], has_biases, in_ids, in_pos,
                                depth, d, h0[i], c0[i])
            outs.append(state)
            finals.append(state)
            cells.append(cell)
        in_ids = torch.cat(outs)
        in_pos = torch.zeros_like(in_ids)
        depth = ctx.builder.depth_of(in_ids) + 1
    shapes = [tuple(v.shape) for v in node.meta["val"]]
    infos = [TensorInfo(broadcast_ids(in_ids, shapes[0], len(shapes[0]) - 1), fresh_pos(shapes[0], -1))]
    for nodes in (finals, cells)[: len(shapes) - 1]:
        infos.append(_per_layer(nodes, shapes[len(infos)]))
    return infos


def _per_layer(nodes: list[Tensor], shape: tuple[int, ...]) -> TensorInfo:
    """Info of ``h_n`` / ``c_n``: layer-and-direction ``i`` (axis 0) holds ``nodes[i]`` along
    the last axis."""
    ids = torch.stack(nodes).view(len(nodes), *([1] * (len(shape) - 2)), -1).expand(shape)
    pos = torch.arange(len(nodes)).view(-1, *([1] * (len(shape) - 1))).expand(shape)
    return TensorInfo(ids, pos)
