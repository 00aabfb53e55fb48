"""Augmentations of a batch of parameter graphs that are exact in function space.

A permutation of hidden neurons cannot change what an equivariant metanetwork computes, so
permuting weights adds nothing to its training data. Moving the *input* does: for a model that
reads coordinates (an INR), ``x -> f(A x + t)`` is the same model of a rotated, scaled and shifted
signal, and its first dense layer absorbs the map exactly,

.. math::
    W (A x + t) + b = (W A) x + (W t + b),

so the augmented weights are computed, never fitted (Navon et al. 2023's INR augmentations,
which the field's MNIST INR results train with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from converters.vocab import EdgeType, NodeType


@dataclass(frozen=True)
class CoordinateAffine:
    """Per graph, a random rotation by up to ``rotation`` degrees, scaling by a factor in
    ``[1 - scale, 1 + scale]`` and shift by up to ``translation`` per axis of 2-D input
    coordinates, folded into the first layer (see the module docstring). The graphs' models must
    read two input coordinates through dense weights into neurons that each have a bias."""

    rotation: float = 45.0
    translation: float = 0.25
    scale: float = 0.2

    def maps(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``count`` draws of ``(A, t)``: ``(count, 2, 2)`` and ``(count, 2)``."""
        uniform = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # noqa: E731
        angle = uniform(count) * math.radians(self.rotation)
        factor = 1 + uniform(count) * self.scale
        cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2), \
            uniform(count, 2) * self.translation

    def __call__(self, batch, values: Tensor, generator: torch.Generator) -> Tensor:
        """``values`` (one per edge of ``batch``, raw) of the graphs' models composed with a random
        affine map of their inputs; every other edge unchanged."""
        a, t = self.maps(batch.num_graphs, generator)
        return apply_coordinate_affine(batch, values, a.to(values), t.to(values))


def apply_coordinate_affine(batch, values: Tensor, a: Tensor, t: Tensor) -> Tensor:
    """The edge values of ``x -> f_g(a[g] x + t[g])`` for every graph ``g`` of ``batch``."""
    src, dst = batch.edge_index
    graph_of = batch.batch if hasattr(batch, "batch") and batch.batch is not None \
        else torch.zeros(batch.num_nodes, dtype=torch.long, device=src.device)
    reads_input = (batch.node_type[src].long() == int(NodeType.INPUT)) & \
        (batch.edge_type.long() == int(EdgeType.LINEAR))
    neuron, coord = dst[reads_input], batch.node_index[src[reads_input]].long()
    if neuron.numel() == 0 or bool((coord < 0).any() | (coord > 1).any()):
        raise ValueError("coordinate augmentation needs models that read 2-D coordinates through dense weights")
    first = torch.zeros(batch.num_nodes, 2, dtype=values.dtype, device=values.device)
    first[neuron, coord] = values[reads_input]
    g = graph_of[neuron]
    out = values.clone()
    out[reads_input] = torch.einsum("ni,nij->nj", first[neuron], a[g])[torch.arange(len(neuron)), coord]
    is_bias = (batch.edge_type.long() == int(EdgeType.BIAS))
    has_input = torch.zeros(batch.num_nodes, dtype=torch.bool, device=src.device)
    has_input[neuron] = True
    bias = is_bias & has_input[dst]
    if int(bias.sum()) != int(has_input.sum()):
        raise ValueError("coordinate augmentation needs a bias on every neuron that reads the coordinates")
    biased = dst[bias]
    out[bias] = values[bias] + (first[biased] * t[graph_of[biased]]).sum(-1)
    return out


__all__ = ["CoordinateAffine", "apply_coordinate_affine"]
