"""What the converter knows about each tensor of a traced forward pass.

Every activation is shadowed by integer tensors of the same shape: ``ids`` names the
neuron (graph node) each element belongs to (-1: none), ``pos`` its spatial position.
Shape ops (view, permute, slice, cat, ...) are applied to these shadows exactly as to
the activation, so channel bookkeeping through reshapes, heads and flattening needs no
per-op reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class TensorInfo:
    ids: Tensor  #: node id per element, -1 where the element is no neuron's
    pos: Tensor  #: position per element (flat index over non-batch, non-channel axes)
    const: bool = False  #: independent of the model's inputs (buffers, arange, rotary tables)
    param: str | None = None  #: when a view of a parameter: its name ...
    flat: Tensor | None = None  #: ... and the parameter's flat index per element
    routes: Tensor | None = None  #: router neurons this tensor selected from (top-k)
    taint: Tensor | None = None  #: neurons a tensor without neurons was computed from (masks, indices)

    @property
    def has_neurons(self) -> bool:
        return self.param is None and bool((self.ids >= 0).any())

    def map(self, fn) -> TensorInfo:
        """Apply the same shape op to every shadow tensor."""
        return replace(
            self,
            ids=fn(self.ids),
            pos=fn(self.pos),
            flat=None if self.flat is None else fn(self.flat),
        )


def first_occurrence(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique keys, the inverse map and the first position of each key."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), key.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(key.numel()), reduce="amin")
    return uniq, inverse, first


def distinct_ids(ids: Tensor) -> Tensor:
    """The node ids in ``ids`` (with repeats, -1 dropped), without expanding broadcast axes."""
    for d in range(ids.dim()):
        if ids.shape[d] > 1 and ids.stride(d) == 0:
            ids = ids.narrow(d, 0, 1)
    ids = ids.reshape(-1)
    return ids[ids >= 0]


def channel_ids(ids: Tensor, dim: int) -> Tensor:
    """The node of each index along ``dim`` (padding, i.e. -1, is ignored)."""
    n = ids.shape[dim]
    return ids.movedim(dim, -1).reshape(-1, n).amax(0)


def fresh_pos(shape: tuple[int, ...], channel_dim: int) -> Tensor:
    """Flat index over every axis but the batch (0) and the channel axis."""
    nd = len(shape)
    channel_dim %= max(nd, 1)
    keep = [d for d in range(1, nd) if d != channel_dim]
    sizes = [shape[d] for d in keep]
    n = 1
    for s in sizes:
        n *= s
    idx = torch.arange(n).reshape(sizes) if sizes else torch.zeros((), dtype=torch.long)
    view = [shape[d] if d in keep else 1 for d in range(nd)]
    return idx.reshape(view).expand(shape)


def positions(ids: Tensor) -> Tensor:
    """Flat index over the non-batch axes along which the neurons do not change."""
    shape = tuple(ids.shape)
    keep = [d for d in range(1, len(shape)) if shape[d] > 1 and bool((ids != ids.narrow(d, 0, 1)).any())]
    sizes = [1 if (d == 0 or d in keep) else shape[d] for d in range(len(shape))]
    n = 1
    for s in sizes:
        n *= s
    return torch.arange(n).reshape(sizes).expand(shape)


def broadcast_ids(nodes: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    """Node ids ``nodes`` laid along axis ``dim`` of a tensor of ``shape``."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return nodes.reshape(view).expand(shape)


def no_neurons(shape: tuple[int, ...], const: bool) -> TensorInfo:
    z = torch.full((), -1, dtype=torch.long).expand(shape)
    return TensorInfo(ids=z, pos=torch.zeros((), dtype=torch.long).expand(shape), const=const)
