"""Neuron activations of a graph's model on inputs, keyed by graph node.

A neuron of a parameter graph is an output channel of the layer whose weights point at it. The
layers that are modules (``nn.Linear``, ``nn.Conv*``, Hugging Face's ``Conv1D``, anything with a
``weight`` whose scalars are parameter edges) are hooked while the graph's model runs through
:func:`converters.functional_call`; channel ``j`` of a module's output is the node that the
edges of row ``j`` of its weight point at. Activation matching and REPAIR read these;
neurons of layers that are not modules (fused experts, ONNX graphs) have no activations here
and are matched by their weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import converters
from converters import ParameterGraph

#: rows (batch x positions) kept per neuron: enough for correlations, bounded memory
MAX_ROWS = 4096


def _output_nodes(g: ParameterGraph, name: str) -> tuple[int, Tensor] | None:
    """(weight axis, nodes) when the edges of parameter ``name`` point at one node per index of
    one axis (the layer's output channels)."""
    index = g.param_index
    for pname, shape, offset in index.params:
        if pname != name or len(shape) < 2:
            continue
        dst = g.edge_index[1, offset:offset + math.prod(shape)].view(shape)
        for axis in range(len(shape)):
            lines = dst.movedim(axis, 0).reshape(shape[axis], -1)
            if bool((lines == lines[:, :1]).all()) and torch.unique(lines[:, 0]).numel() == shape[axis]:
                return axis, lines[:, 0]
        return None
    return None


def _channels(output: Tensor, size: int, conv: bool) -> Tensor | None:
    """``(rows, size)`` channel view of a module output (channels on dim 1 for convolutions,
    last otherwise)."""
    if not isinstance(output, Tensor) or output.dim() == 0:
        return None
    dim = 1 if conv and output.dim() > 2 else output.dim() - 1
    if output.size(dim) != size:
        return None
    return output.movedim(dim, -1).reshape(-1, size)


def neuron_activations(g: ParameterGraph, values: Tensor | None, inputs: tuple) -> dict[int, Tensor]:
    """``{node: (rows,) activations}`` of the hooked layers' output neurons on ``inputs``
    (float64; the same rows for every model of one template, so they can be compared)."""
    model = getattr(g, "model", None)
    if not isinstance(model, nn.Module):
        return {}
    names = {name for name, _, _ in g.param_index.params}
    found: dict[int, Tensor] = {}
    handles = []

    def hook_for(nodes: Tensor, conv: bool):
        def hook(module, args, output):
            rows = _channels(output, nodes.numel(), conv)
            if rows is None or int(nodes[0]) in found:
                return  # a layer applied twice: its first use stands for it
            step = max(1, rows.size(0) // MAX_ROWS)
            rows = rows[::step][:MAX_ROWS].detach().double()
            for j, node in enumerate(nodes.tolist()):
                found[node] = rows[:, j]
        return hook

    for mname, module in model.named_modules():
        pname = f"{mname}.weight" if mname else "weight"
        if pname not in names or not isinstance(getattr(module, "weight", None), Tensor):
            continue
        if getattr(module, "is_scope", False):  # an ONNX module path: its output is no layer's
            continue
        placed = _output_nodes(g, pname)
        if placed is None:
            continue
        axis, nodes = placed
        conv = isinstance(module, nn.modules.conv._ConvNd)
        if conv and axis != 0:
            continue
        handles.append(module.register_forward_hook(hook_for(nodes, conv)))
    try:
        with torch.no_grad():
            converters.functional_call(g, values, *inputs)
    finally:
        for h in handles:
            h.remove()
    return found


__all__ = ["MAX_ROWS", "neuron_activations"]
