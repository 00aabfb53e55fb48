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
    #: a tensor computed from the parameter ``param`` (weight standardisation, ``2 * w``): each
    #: element is a function of scalar ``flat`` and of the scalars grouped with it; ``(code,
    #: groups)``, ``groups`` a tuple of group-id tensors over the parameter's scalars, or ``None``
    #: for a function nobody proved row-wise (``rules.weight_norm``)
    computed: tuple | None = None

    @property
    def has_neurons(self) -> bool:
        return self.param is None and bool((compact(self.ids) >= 0).any())

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


def compact(t: Tensor, keep: int | None = None) -> Tensor:
    """``t`` without its broadcast axes (stride 0: one value repeated by layout), each narrowed
    to size 1, except axis ``keep``. ``compact(t).expand(t.shape)`` is ``t``.

    Shadows of activations repeat one neuron id over every spatial position and token
    (``broadcast_ids``): rules that work on compact shadows cost what the model's neurons
    cost, not what the example input's size does."""
    for d in range(t.dim()):
        if d != keep and t.shape[d] > 1 and t.stride(d) == 0:
            t = t.narrow(d, 0, 1)
    return t


def broadcast_shape(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` of plain sizes, in a few microseconds (torch's takes about 0.2 ms
    a call, and rules and ONNX ops call it per op). Anything irregular (a mismatch, a negative
    size) goes to torch's, for its error."""
    nd = max((len(s) for s in shapes), default=0)
    out = [1] * nd
    for shape in shapes:
        offset = nd - len(shape)
        for i, d in enumerate(shape):
            if d != 1:
                if out[offset + i] == 1:
                    out[offset + i] = d
                elif out[offset + i] != d:
                    return torch.broadcast_shapes(*shapes)
    if any(d < 0 for d in out):
        return torch.broadcast_shapes(*shapes)
    return torch.Size(out)


def broadcast_axes(shape: tuple[int, ...], *tensors: Tensor) -> list[int]:
    """Axes of ``shape`` along which every one of ``tensors``, broadcast to ``shape``, is a
    broadcast (stride 0): a rule may compute there on one index and expand its result."""
    views = [t.broadcast_to(shape) for t in tensors]
    return [d for d in range(len(shape)) if shape[d] > 1 and all(v.stride(d) == 0 for v in views)]


def narrow_axes(t: Tensor, shape: tuple[int, ...], axes: list[int]) -> Tensor:
    """``t`` broadcast to ``shape``, then narrowed to index 0 along ``axes``."""
    t = t.broadcast_to(shape)
    for d in axes:
        t = t.narrow(d, 0, 1)
    return t


def reshape_shadow(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t.reshape(shape)`` that keeps an axis carried over whole (same size, not merged or
    split) a broadcast when it is one in ``t``: a reshape that splits heads off the channel axis
    of a ``(batch, tokens, channels)`` shadow does not write out every token."""
    try:
        return t.view(shape)
    except RuntimeError:
        pass
    groups, i, j = [], 0, 0
    while i < t.dim() and j < len(shape):
        gi, gj, pa, pb = [i], [j], t.shape[i], shape[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < t.dim():
                pa, i = pa * t.shape[i], i + 1
                gi.append(i - 1)
            elif j < len(shape):
                pb, j = pb * shape[j], j + 1
                gj.append(j - 1)
            else:
                return t.reshape(shape)
        groups.append((gi, gj))
    small = list(shape)
    for gi, gj in groups:
        if len(gi) == 1 and len(gj) == 1 and t.shape[gi[0]] > 1 and t.stride(gi[0]) == 0:
            t = t.narrow(gi[0], 0, 1)
            small[gj[0]] = 1
    return t.reshape(small).expand(shape)


def repeat_shadow(t: Tensor, repeats: int, dim: int) -> Tensor:
    """``t.repeat_interleave(repeats, dim)`` that leaves the other broadcast axes broadcasts."""
    dim %= t.dim()
    shape = list(t.shape)
    shape[dim] *= repeats
    return compact(t, keep=dim).repeat_interleave(repeats, dim).expand(shape)


def distinct_ids(ids: Tensor) -> Tensor:
    """The node ids in ``ids`` (with repeats, -1 dropped), without expanding broadcast axes."""
    ids = compact(ids).reshape(-1)
    return ids[ids >= 0]


def channel_ids(ids: Tensor, dim: int) -> Tensor:
    """The node of each index along ``dim`` (padding, i.e. -1, is ignored)."""
    n = ids.shape[dim]
    return compact(ids, keep=dim % ids.dim()).movedim(dim, -1).reshape(-1, n).amax(0)


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
