"""Edge values back to weights: a state_dict, a graph with new values, a model call.

Parameter edges are laid out parameter by parameter in flat order (see ``graph.py``), so
writing back is slicing and reshaping: exact, vectorised and differentiable.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor
from torch_geometric.data import Batch

from .graph import ConversionError, ParameterGraph


def _edge_starts(g: ParameterGraph) -> list[int]:
    if isinstance(g, Batch):
        return [int(s) for s in g._slice_dict["edge_value"][:-1]]
    return [0]


def _param_counts(g: ParameterGraph) -> list[int]:
    return [int(n) for n in g.num_param_edges.reshape(-1)]


PARAMETER, TIED, STRUCTURAL = 0, 1, 2


def edge_kinds(g: ParameterGraph) -> Tensor:
    """``PARAMETER`` (0), ``TIED`` (1) or ``STRUCTURAL`` (2) for every edge of a graph or batch."""
    batch = getattr(g, "batch", None)
    n_edges = g.edge_index.size(1)
    if batch is None:
        graph = torch.zeros(n_edges, dtype=torch.long, device=g.edge_index.device)
    else:
        graph = batch[g.edge_index[0]]
    counts = torch.bincount(graph, minlength=g.num_param_edges.numel())
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(n_edges, device=graph.device) - starts[graph]
    p = g.num_param_edges.view(-1).to(graph.device)[graph]
    t = g.num_tied_edges.view(-1).to(graph.device)[graph]
    kind = torch.full_like(local, STRUCTURAL)
    kind[local < p + t] = TIED
    kind[local < p] = PARAMETER
    return kind


def parameter_edge_mask(g: ParameterGraph) -> Tensor:
    """True at the edges that carry parameters (``values = edge_outputs[mask]``)."""
    return edge_kinds(g) == PARAMETER


def parameter_values(g: ParameterGraph) -> Tensor:
    """One entry per parameter scalar, in graph order (for a batch: graph after graph)."""
    return torch.cat([g.edge_value[s : s + n] for s, n in zip(_edge_starts(g), _param_counts(g))])


def _split(g: ParameterGraph, values: Tensor | None) -> list[Tensor]:
    counts = _param_counts(g)
    if values is not None and not isinstance(values, Tensor):
        raise ConversionError(f"values must be a torch.Tensor of parameter values, not {type(values).__name__}")
    if values is not None and not values.is_floating_point():
        raise ConversionError(f"values must be floating point, not {values.dtype} (weights are real numbers)")
    if values is None:
        return [g.edge_value[s : s + n] for s, n in zip(_edge_starts(g), counts)]
    if values.dim() != 1 or values.numel() != sum(counts):
        raise ConversionError(
            f"values have shape {tuple(values.shape)}; the graph has {sum(counts)} parameter scalars"
        )
    return list(torch.split(values, counts))


def _state_dict_one(index, values: Tensor) -> dict[str, Tensor]:
    params = {}
    for name, shape, offset in index.params:
        n = 1
        for s in shape:
            n *= s
        t = values[offset : offset + n].reshape(shape)
        dtype = index.dtypes.get(name)
        params[name] = t.to(getattr(torch, dtype)) if dtype else t
    out = {}
    for key in index.state_keys:
        if key in params:
            out[key] = params[key]
        elif key in index.aliases:
            out[key] = params[index.aliases[key]]
        else:
            out[key] = index.buffers[key]
    return out


def _indices(g: ParameterGraph) -> list:
    return g.param_index if isinstance(g.param_index, list) else [g.param_index]


def to_state_dict(g: ParameterGraph, values: Tensor | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
    """The model's state_dict with parameter values ``values`` (default: the graph's own).

    Buffers are kept; tied names share one tensor. ``values`` may carry gradients. For a
    PyG ``Batch`` of graphs, returns one state_dict per graph.
    """
    parts = _split(g, values)
    dicts = [_state_dict_one(index, v) for index, v in zip(_indices(g), parts)]
    return dicts if isinstance(g, Batch) else dicts[0]


def with_values(g: ParameterGraph, values: Tensor, buffers: dict[str, Tensor] | None = None) -> ParameterGraph:
    """A copy of single graph ``g`` whose parameter (and tied) edges carry ``values``."""
    parts = _split(g, values)
    out = copy.copy(g)
    p = int(g.num_param_edges.sum())
    t = int(g.num_tied_edges.sum())
    edge_value = g.edge_value.clone()
    edge_value[:p] = parts[0]
    edge_value[p : p + t] = parts[0][g.tied_slot]
    out.edge_value = edge_value
    if buffers is not None:
        index = g.param_index
        out.param_index = dataclasses.replace(index, buffers={**index.buffers, **buffers})
    return out


def functional_call(g: ParameterGraph, values: Tensor | None, *inputs, training: bool = False, **kwargs):
    """Run the graph's model with parameter values ``values``; differentiable in ``values``.

    The model runs in eval mode (the mode it was converted in) unless ``training``.
    """
    model = getattr(g, "model", None)
    if model is None:
        raise ConversionError("this graph has no model attached (graphs loaded from disk carry none); "
                              "set g.model = the module it was converted from")
    was_training = model.training
    model.train(training)
    try:
        device = (values if values is not None else g.edge_value).device
        # buffers live with the graph in host memory; the call runs where the values are
        state = {k: v.to(device) for k, v in to_state_dict(g, values).items()}
        return torch.func.functional_call(model, state, inputs, kwargs)
    finally:
        model.train(was_training)
